"""The library face: ``handfit.fit(image) -> FitResult`` and ``handfit.fit_batch``.

Per photo: load -> intrinsics -> detect (MediaPipe), then every hand goes
through the one pipeline (:mod:`handfit.fitting.pipeline`): side decision ->
initialise -> keypoint stage -> dense stage -> results. Hands of all photos in
a call are optimised together, one batch per side.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import HandfitError, UsageError
from .fitting.pipeline import SIDE_ORDER, HandItem, fit_hands, frame_intrinsics
from .fitting.resources import Resources
from .fitting.results import FitResult, HandResult
from .options import DenseStage, DenseWeights, FitOptions, KeypointStage, KeypointWeights

_DEFAULT: Resources | None = None
_DEFAULT_LOCK = threading.Lock()


def default_resources() -> Resources:
    """The process's default :class:`Resources`, made on first use: what ``fit()``
    and ``fit_batch()`` use when they are given none."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Resources()
        return _DEFAULT


def clear_caches() -> None:
    """Close the default resources' detectors and forget its models, regressors
    and priors (e.g. to free memory, or after retraining a shipped weight)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        res, _DEFAULT = _DEFAULT, None
    if res is not None:
        res.close()


@dataclass
class _Photo:
    index: int
    photo: object                   # handfit.io.image.Photo
    K: np.ndarray
    detections: list
    found: int = 0


def _prepare(images: Iterable, opts: FitOptions, res: Resources, skip_unreadable: bool, detections=None,
             boxes=None, cameras=None) -> tuple:
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
            K = cameras[i]
        else:
            K = frame_intrinsics(photo.width, photo.height, opts, exif_focal=photo.exif_focal_px)
        if detections is not None:
            dets = detections[i]
        elif boxes is not None and boxes[i] is not None:
            dets = res.detector(opts.detect).detect_in_boxes(photo.rgb, boxes[i])
        else:
            dets = res.detector(opts.detect).detect(photo.rgb)
        dets = list(dets)
        found = len(dets)
        dets = dets[: opts.max_hands]
        if opts.views and dets:
            # the evidence step (handfit.detect.evidence): each hand's views, once, for its side and its evidence
            dets = res.detector(opts.detect).evidence(photo.rgb, dets, opts.views)
        out.append(_Photo(i, photo, np.asarray(K, dtype=np.float64), dets, found))
    return out, errors


_CAMERA_FORMS = "(fx, fy, cx, cy) in pixels or a finite 3x3 matrix [[fx,0,cx],[0,fy,cy],[0,0,1]], with fx, fy > 0"


def _shape(value) -> tuple | None:
    """The shape of ``value`` as a float array, or None when it is not one (a list holding None)."""
    try:
        return np.asarray(value, dtype=np.float64).shape
    except (TypeError, ValueError):
        return None


def camera_matrix(value) -> np.ndarray:
    """A camera as a checked (3,3) float64 K; ``value``: ``(fx, fy, cx, cy)`` or a (3,3) K.
    Raises UsageError for anything else."""
    from .camera import intrinsics_matrix

    if _shape(value) == (4,):
        try:
            return intrinsics_matrix(*value)
        except UsageError:
            raise UsageError(f"intrinsics must be {_CAMERA_FORMS}, not {value!r}") from None
    K = np.asarray(value, dtype=np.float64) if _shape(value) == (3, 3) else None
    if K is None or not np.isfinite(K).all() or not np.allclose(K[2], [0, 0, 1]) \
            or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise UsageError(f"intrinsics must be {_CAMERA_FORMS}, not {value!r}")
    return K


def _cameras(intrinsics, n: int) -> list | None:
    """``fit_batch``'s ``intrinsics`` as one (3,3) K or None per image: one camera for all
    images, or a list of one camera (or None) per image; a camera is ``(fx, fy, cx, cy)`` or a
    (3,3) K. The two never look alike: a list of cameras is never of shape (4,) or (3,3)."""
    if intrinsics is None:
        return None
    if _shape(intrinsics) in ((4,), (3, 3)):
        K = camera_matrix(intrinsics)
        return [K.copy() for _ in range(n)]
    try:
        cams = list(intrinsics)
    except TypeError:
        raise UsageError(f"intrinsics must be {_CAMERA_FORMS}, or a list of those (or None) per image") from None
    if len(cams) != n:
        raise UsageError(f"got {len(cams)} intrinsics for {n} images")
    return [None if c is None else camera_matrix(c) for c in cams]


def fit_batch(images: Iterable, progress: Callable | None = None, skip_unreadable: bool = False,
              detections: list | None = None, boxes: list | None = None, intrinsics=None,
              resources: Resources | None = None, **options) -> list:
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
    ``intrinsics``: optional, the camera of every image, or a list of one camera (or
    None) per image, e.g. a dataset's calibration; a camera is ``(fx, fy, cx, cy)``
    in pixels or a (3,3) K. It overrides ``intrinsics``/``focal`` of the options and EXIF.
    ``progress(stage, side, iteration, total)`` is called during optimisation.
    ``resources``: the detectors, models and priors to use (built once, shared
    by threads; default: :func:`default_resources`).
    """
    opts = options.pop("options", None) or FitOptions(**options)
    opts.torch_device()  # an unavailable device fails here, before any work
    images = list(images)
    if detections is not None and len(detections) != len(images):
        raise UsageError(f"got {len(detections)} detection lists for {len(images)} images")
    if boxes is not None and len(boxes) != len(images):
        raise UsageError(f"got {len(boxes)} box lists for {len(images)} images")
    cameras = _cameras(intrinsics, len(images))
    res = resources or default_resources()
    photos, errors = _prepare(images, opts, res, skip_unreadable, detections, boxes, cameras)
    items = [HandItem(p.K, d, p.photo.rgb) for p in photos for d in p.detections]
    owner = [p.index for p in photos for _ in p.detections]
    fitted: dict = {p.index: [] for p in photos}
    hands = list(zip(owner, fit_hands(items, opts, res, progress)))
    for side in SIDE_ORDER:  # equal scores keep the batch order: right hands first
        for index, hand in hands:
            if hand.side == side:
                fitted[index].append((hand.score, hand))
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


def fit(image, progress: Callable | None = None, boxes: list | None = None, resources: Resources | None = None,
        intrinsics=None, **options) -> FitResult:
    """Fit every hand in one photo.

    image: a path, an (H,W,3) uint8 array or a PIL image.
    progress: optional ``progress(stage, side, iteration, total)``, called during optimisation.
    boxes: optional hand boxes ``[(x0, y0, x1, y1[, side]), ...]`` in pixels.
    resources: see :func:`fit_batch`.
    intrinsics: optional camera, ``(fx, fy, cx, cy)`` in pixels or a (3,3) K; it overrides
    ``focal`` and EXIF (``FitOptions.intrinsics``, the same camera as four numbers).
    options: fields of :class:`FitOptions` (device, max_hands, detect, side_check_below,
    side_check_iters, model, mano, focal, renderer, crop_size, texture_size, texture_prior,
    views, spread_sigma, keypoint, dense; ``track`` is for videos), or ``options=`` a whole
    FitOptions.
    Raises ImageError for unreadable input and UsageError for bad options; a
    photo without hands gives a FitResult with ``hands == []``.
    """
    return fit_batch([image], progress=progress, boxes=None if boxes is None else [boxes], intrinsics=intrinsics,
                     resources=resources, **options)[0]


def export_track(path, params, track: int = 0, side: str | None = None, times=None, texture=None,
                 model: str | None = None, mano=None, resources: Resources | None = None,
                 influences: int = 4) -> Path:
    """Write one track as an animated, skinned, textured glTF (``.glb``): the same file
    ``handfit batch`` writes as a video's ``track<t>.glb`` (:mod:`handfit.io.gltf_track`).

    params: a video's ``tracks.npz`` (path; its track ``track`` gives side, parameters and
    times), or per-frame parameters as (T,·) arrays named as result.json and tracks.npz
    name them (Anny: global_orient, pose, shape, transl; MANO: smplx's names), then with
    ``side`` and ``times`` (T,) seconds. texture: (H,W,3) uint8 or an image path (None: a
    plain skin colour). model: "anny" (default) or "mano" (with ``mano``, the MANO file);
    from the npz's params when not given. influences: joints per vertex, 4 or 8 (see
    :func:`handfit.io.gltf_track.write_track_glb`). -> the path written
    """
    from .io.gltf_track import npz_track, to_handfit_params, write_track_glb

    if isinstance(params, (str, Path)):
        npz_side, params, npz_times = npz_track(params, track)
        side, times = side or npz_side, npz_times if times is None else times
    if side is None or times is None:
        raise UsageError("export_track needs side and times unless params is a tracks.npz")
    model = model or ("mano" if "betas" in params else "anny")
    if isinstance(texture, (str, Path)):
        from PIL import Image

        texture = np.asarray(Image.open(texture).convert("RGB"))
    hand = (resources or default_resources()).model(model, side, mano_path=mano)
    return write_track_glb(path, hand, to_handfit_params(hand, params), times, texture, influences=influences)


__all__ = ["fit", "fit_batch", "export_track", "clear_caches", "default_resources", "Resources", "FitResult", "HandResult", "FitOptions", "KeypointStage", "KeypointWeights",
           "DenseStage", "DenseWeights", "HandfitError"]
