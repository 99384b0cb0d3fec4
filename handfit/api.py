"""The library face: ``handfit.fit(image) -> FitResult`` and ``handfit.fit_batch``.

Pipeline per photo: load -> detect (MediaPipe) -> intrinsics -> initialise
(regressor or IK) -> keypoint stage -> dense appearance stage -> results.
Hands of all photos in a call are optimised together, one batch per side.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .errors import HandfitError, UsageError
from .options import DenseStage, DenseWeights, FitOptions, KeypointStage, KeypointWeights

SKIN_RGB = (0.80, 0.62, 0.52)  # flat texture when no appearance is fitted (linear-ish sRGB)


@dataclass
class HandResult:
    """One fitted hand; every array is numpy, every coordinate in the full photo."""

    side: str                       # "left" | "right"
    score: float
    bbox_xyxy: np.ndarray           # (4,) pixels
    keypoints_2d_detected: np.ndarray  # (21,2) pixels
    keypoints_2d_fitted: np.ndarray    # (21,2) pixels
    keypoints_3d: np.ndarray        # (21,3) camera frame, metres
    world_landmarks: np.ndarray     # (21,3) MediaPipe world landmarks, metres
    params: dict                    # name -> array: global_orient, pose/hand_pose, shape/betas, transl
    vertices: np.ndarray            # (V,3) camera frame, metres
    faces: np.ndarray               # (F,3)
    uv_coords: np.ndarray           # (T,2)
    uv_faces: np.ndarray            # (F,3)
    texture: np.ndarray             # (Ht,Wt,3) uint8
    init: str                       # "regressor" | "ik"
    losses: dict                    # stage -> term -> value
    metrics: dict                   # per-hand measurements (errors, iterations, ...)
    seconds: float                  # this hand's share of the optimisation time
    detect_pass: str = "full"       # the detection pass that found it (handfit.detect_passes)
    side_source: str = "detector"   # "detector" | "fit" (both models fitted, handfit.fitting.side)
    side_losses: dict | None = None  # {"left": loss, "right": loss} when both were fitted
    stages: dict = field(default_factory=dict)  # earlier stages' results, e.g. stages["keypoint"] =
                                                # {"keypoints_3d": (21,3), "keypoints_2d": (21,2)} before the dense stage


@dataclass
class FitResult:
    """All hands fitted in one photo."""

    image_path: str | None
    width: int
    height: int
    K: np.ndarray                   # (3,3) intrinsics of the full photo
    model: str
    hands: list
    image: np.ndarray = field(repr=False, default=None)  # (H,W,3) uint8, EXIF-oriented
    error: str | None = None        # why the photo could not be read (fit_batch(skip_unreadable=True))
    hands_found: int = 0            # hands detected (before the max_hands cut)

    def to_dict(self, files: list | None = None, overlay: str | None = None) -> dict:
        """The ``result.json`` document. ``files``: per-hand dicts of relative paths."""
        hands = []
        for i, h in enumerate(self.hands):
            hands.append({
                "side": h.side, "score": h.score, "bbox_xyxy": h.bbox_xyxy,
                "keypoints_2d_detected": h.keypoints_2d_detected,
                "keypoints_2d_fitted": h.keypoints_2d_fitted,
                "keypoints_3d": h.keypoints_3d,
                "params": h.params, "init": h.init, "losses": h.losses, "metrics": h.metrics,
                "seconds": h.seconds, "pass": h.detect_pass,
                "side_source": h.side_source, "side_losses": h.side_losses,
                "files": files[i] if files else {},
            })
        return {
            "image": {"path": self.image_path, "width": self.width, "height": self.height},
            "camera": {"K": self.K},
            "model": self.model,
            "hands_found": self.hands_found,
            "hands": hands,
            "overlay": overlay,
        }

    def save(self, outdir, stem: str | None = None) -> Path:
        """Write result.json, per-hand OBJ/MTL/PNG, GLB and NPZ, and overlay.png
        into ``outdir/<stem>/``; returns that folder."""
        from .io.save import save_result

        return save_result(self, outdir, stem)


# -- pipeline ---------------------------------------------------------------------------

_DETECTORS: dict = {}
_DETECTORS_LOCK = threading.Lock()


def _detector(mode: str):
    """One MediaPipe detector per process and detection mode (they take ~0.1 s to make)."""
    from .detect import Detector

    with _DETECTORS_LOCK:
        if mode not in _DETECTORS:
            _DETECTORS[mode] = Detector(mode=mode)
        return _DETECTORS[mode]


def clear_caches() -> None:
    """Close the cached detectors and forget the cached regressors and hand
    models (e.g. to free memory, or after retraining a shipped weight)."""
    from .fitting.init import clear_regressors
    from .models import clear_model_cache

    with _DETECTORS_LOCK:
        for det in _DETECTORS.values():
            det.close()
        _DETECTORS.clear()
    clear_regressors()
    clear_model_cache()
    with _PRIORS_LOCK:
        _PRIORS.clear()


@dataclass
class _Photo:
    index: int
    photo: object                   # handfit.io.image.Photo
    K: np.ndarray
    detections: list
    found: int = 0


def _prepare(images: Iterable, opts: FitOptions, skip_unreadable: bool, detections=None, boxes=None,
             cameras=None) -> tuple:
    from .camera import intrinsics, intrinsics_matrix
    from .errors import ImageError
    from .io.image import load_image

    out, errors = [], {}
    for i, image in enumerate(images):
        try:
            photo = load_image(image)
        except ImageError as exc:
            if not skip_unreadable:
                raise
            errors[i] = str(exc)
            continue
        if cameras is not None and cameras[i] is not None:
            K = _camera(cameras[i])
        elif opts.intrinsics is not None:
            K = intrinsics_matrix(*opts.intrinsics)
        else:
            K = intrinsics(photo.width, photo.height, focal=opts.focal, exif_focal=photo.exif_focal_px)
        if detections is not None:
            dets = detections[i]
        elif boxes is not None and boxes[i] is not None:
            dets = _detector(opts.detect).detect_in_boxes(photo.rgb, boxes[i])
        else:
            dets = _detector(opts.detect).detect(photo.rgb)
        dets = list(dets)
        out.append(_Photo(i, photo, np.asarray(K, dtype=np.float64), dets[: opts.max_hands], len(dets)))
    return out, errors


def _camera(K) -> np.ndarray:
    """A caller's (3,3) intrinsics, checked."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or not np.allclose(K[2], [0, 0, 1]) \
            or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise UsageError("intrinsics must be a finite 3x3 matrix [[fx,0,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0")
    return K


_PRIORS: dict = {}
_PRIORS_LOCK = threading.Lock()


def _texture_prior(spec: str, model: str, device, dtype):
    """The learned texture prior FitOptions.texture_prior names (cached), or None.
    The shipped one is trained on Anny's UV atlas: MANO gets it only by path."""
    if spec == "none" or (spec == "default" and model != "anny"):
        return None
    key = (spec, str(device), dtype)
    with _PRIORS_LOCK:  # like the detector and regressor caches: safe from several threads
        if key not in _PRIORS:
            from .texture.fill import resolve_prior

            _PRIORS[key] = resolve_prior(spec, device, dtype)
        return _PRIORS[key]


def _fit_side(side: str, items: list, opts: FitOptions, device, progress):
    """Fit every hand of one side across photos in one batch. items: [(photo, det)]."""
    from .fitting.init import initialise, load_regressor
    from .fitting.keypoint import fit_keypoints
    from .models import load_model
    from .camera import project

    dtype = torch.float32
    model = load_model(opts.model, side=side, mano_path=opts.mano, device=device, dtype=dtype)
    K = torch.tensor(np.stack([p.K for p, _ in items]), device=device, dtype=dtype)          # (B,3,3)
    kp2d = torch.tensor(np.stack([d.keypoints for _, d in items]), device=device, dtype=dtype)  # (B,21,2)
    world = torch.tensor(np.stack([d.world for _, d in items]), device=device, dtype=dtype)     # (B,21,3)
    box = np.stack([d.box_xyxy for _, d in items])
    scale = torch.tensor(np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]), device=device, dtype=dtype)

    t0 = time.perf_counter()
    net = load_regressor(model, device, dtype)
    params, method = initialise(model, world, kp2d, K, net)
    with torch.no_grad():
        init_err = (project(model(**params).keypoints, K) - kp2d).norm(dim=-1).mean(-1)
    kp_report = fit_keypoints(model, params, K, kp2d, world, scale, opts.keypoint,
                              on_step=(lambda it, loss: progress("keypoints", side, it, opts.keypoint.iters))
                              if progress else None)
    kp_seconds = (time.perf_counter() - t0) / len(items)
    dense_report = None
    texture = None
    before_dense = None
    if opts.dense.enabled:
        from .fitting.dense import fit_dense

        with torch.no_grad():  # the keypoint fit, kept for comparisons (handfit eval --compare)
            kp3d = model(**params).keypoints
            before_dense = (kp3d.double().cpu().numpy(), project(kp3d, K).double().cpu().numpy())

        steps = opts.dense.iters + opts.dense.texture_iters  # both phases' caps
        dense_report, tex = fit_dense(
            model, params, K, kp2d, scale, [p.photo.rgb for p, _ in items], opts.dense, opts.texture_size,
            backend=opts.renderer, crop_size=opts.crop_size,
            texture_prior=_texture_prior(opts.texture_prior, opts.model, device, dtype),
            on_step=(lambda it, loss: progress("dense", side, it, steps)) if progress else None)
        texture = [(t.detach().cpu().numpy() * 255 + 0.5).astype(np.uint8) for t in tex]
    seconds = (time.perf_counter() - t0) / len(items)

    with torch.no_grad():
        out = model(**params)
        uv = project(out.keypoints, K)
    if texture is None:
        texture = np.empty((opts.texture_size, opts.texture_size, 3), np.uint8)
        texture[:] = (np.array(SKIN_RGB) * 255 + 0.5).astype(np.uint8)
        texture = [texture] * len(items)
    results = []
    for b, (photo, det) in enumerate(items):
        losses = {"keypoint": {k: float(v[b]) for k, v in kp_report.terms.items()}}
        metrics = {
            "init_kp2d_px": float(init_err[b]),
            "kp2d_px": float((uv[b] - kp2d[b]).norm(dim=-1).mean()),
            "keypoint_iters": kp_report.iters,
            "keypoint_seconds": kp_seconds,
        }
        stages = {}
        if before_dense is not None:
            stages["keypoint"] = {"keypoints_3d": before_dense[0][b], "keypoints_2d": before_dense[1][b]}
        if dense_report is not None:
            losses["dense"] = {k: float(v[b]) for k, v in dense_report.terms.items()}
            metrics.update({k: (float(v[b]) if torch.is_tensor(v) else v) for k, v in dense_report.metrics.items()})
        results.append((photo.index, det, HandResult(
            side=side, score=float(det.score), bbox_xyxy=np.asarray(det.box_xyxy, np.float64),
            keypoints_2d_detected=np.asarray(det.keypoints, np.float64),
            keypoints_2d_fitted=uv[b].double().cpu().numpy(),
            keypoints_3d=out.keypoints[b].double().cpu().numpy(),
            world_landmarks=np.asarray(det.world, np.float64),
            params=model.export_params({k: v[b:b + 1] for k, v in params.items()}),
            vertices=out.vertices[b].double().cpu().numpy(),
            faces=model.faces.cpu().numpy(), uv_coords=model.uv_coords.double().cpu().numpy(),
            uv_faces=model.uv_faces.cpu().numpy(), texture=texture[b], init=method,
            losses=losses, metrics=metrics, seconds=seconds,
            detect_pass=getattr(det, "pass_name", "full"), side_source=getattr(det, "side_source", "detector"),
            side_losses=getattr(det, "side_losses", None), stages=stages)))
    return results


def fit_batch(images: Iterable, progress: Callable | None = None, skip_unreadable: bool = False,
              detections: list | None = None, boxes: list | None = None, intrinsics: list | None = None,
              **options) -> list:
    """Fit every hand in each photo. ``images``: paths, arrays or PIL images.

    All hands of all photos are optimised together (one batch per side), which
    is what makes ``handfit batch`` fast on a GPU. Returns one FitResult per
    photo, in order; a photo with no hand has ``hands == []``. With
    ``skip_unreadable`` an unreadable photo gives a FitResult whose ``error``
    says why instead of raising ImageError.
    ``detections``: optional, one list of :class:`handfit.detect.Detection`
    per image, to bring your own detector (or tracker) instead of MediaPipe.
    ``boxes``: optional, one list per image (or None) of hand boxes
    ``(x0, y0, x1, y1[, side])`` in pixels: the landmark model runs inside
    each (:meth:`handfit.detect.Detector.detect_in_boxes`) instead of the
    detection cascade.
    ``intrinsics``: optional, one (3,3) K (or None) per image, e.g. a dataset's
    calibration; it overrides ``intrinsics``/``focal`` of the options and EXIF.
    ``progress(stage, side, iteration, total)`` is called during optimisation.
    """
    opts = options.pop("options", None) or FitOptions(**options)
    device = opts.torch_device()
    images = list(images)
    if detections is not None and len(detections) != len(images):
        raise UsageError(f"got {len(detections)} detection lists for {len(images)} images")
    if boxes is not None and len(boxes) != len(images):
        raise UsageError(f"got {len(boxes)} box lists for {len(images)} images")
    if intrinsics is not None and len(intrinsics) != len(images):
        raise UsageError(f"got {len(intrinsics)} intrinsic matrices for {len(images)} images")
    photos, errors = _prepare(images, opts, skip_unreadable, detections, boxes, intrinsics)
    from .fitting.side import resolve_sides

    resolve_sides(photos, opts, device, opts.side_check_below, _detector(opts.detect))
    by_side: dict = {"right": [], "left": []}
    for p in photos:
        for d in p.detections:
            by_side[d.side].append((p, d))
    fitted: dict = {p.index: [] for p in photos}
    for side, items in by_side.items():
        if items:
            for index, det, hand in _fit_side(side, items, opts, device, progress):
                fitted[index].append((det.score, hand))
    results = {}
    for p in photos:
        hands = [h for _, h in sorted(fitted[p.index], key=lambda x: -x[0])]
        results[p.index] = FitResult(image_path=str(p.photo.path) if p.photo.path else None, width=p.photo.width,
                                     height=p.photo.height, K=p.K, model=opts.model, hands=hands, image=p.photo.rgb,
                                     hands_found=p.found)
    for i, msg in errors.items():
        path = images[i] if isinstance(images[i], (str, Path)) else None
        results[i] = FitResult(image_path=str(path) if path else None, width=0, height=0, K=np.eye(3),
                               model=opts.model, hands=[], error=msg)
    return [results[i] for i in range(len(images))]


def fit(image, progress: Callable | None = None, boxes: list | None = None, **options) -> FitResult:
    """Fit every hand in one photo.

    image: a path, an (H,W,3) uint8 array or a PIL image.
    boxes: optional hand boxes ``[(x0, y0, x1, y1[, side]), ...]`` in pixels.
    options: see :class:`FitOptions` (device, max_hands, model, mano, focal, intrinsics,
    renderer, appearance, crop_size, texture_size, keypoint).
    Raises ImageError for unreadable input and UsageError for bad options; a
    photo without hands gives a FitResult with ``hands == []``.
    """
    return fit_batch([image], progress=progress, boxes=None if boxes is None else [boxes], **options)[0]


__all__ = ["fit", "fit_batch", "clear_caches", "FitResult", "HandResult", "FitOptions", "KeypointStage", "KeypointWeights",
           "DenseStage", "DenseWeights", "HandfitError"]
