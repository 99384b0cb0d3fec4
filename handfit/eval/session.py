"""What :func:`handfit.eval.run.evaluate` and :func:`handfit.eval.sequence.evaluate_sequences`
share: one :class:`EvalSession` (options, Resources, fitting function, detector, one warm-up fit,
progress bar, and their teardown), and the per-image steps both take with it: detect once and
match the detections to the labels (:func:`detect_record`), then fit the matched detections
(:meth:`EvalSession.fit`), an image whose fit fails recording its error instead of ending the run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import metrics as M
from .records import Record

__all__ = ["EvalSession", "HandEval", "match_hands", "detect_record", "known_variants", "make_job", "with_dense",
           "drop_fits", "verdict_of", "stage_verdict", "mesh_of"]


@dataclass
class HandEval:
    """One labelled hand and what each variant predicted for it.

    ``preds[variant]`` = {"kp3d": (21,3) metres or None, "kp2d": (21,2) pixels,
    "seconds": float}, and for the fitted variants the hand's verdict and evidence
    (:func:`verdict_of`); empty when the hand was not detected.
    """

    record: str
    hand: int
    side: str | None
    gt3d: np.ndarray | None
    gt2d: np.ndarray | None
    visible: np.ndarray | None
    detected: bool = False
    det_side: str | None = None
    det_score: float = float("nan")
    n_detections: int = 0
    error: str | None = None
    preds: dict = field(default_factory=dict)
    run: str | None = None          # the sequence (run) the image belongs to, ``--sequence`` only

    @property
    def wrong_side(self) -> bool:
        return bool(self.detected and self.side is not None and self.det_side != self.side)


def match_hands(gt2d: list, visible: list, dets: list, threshold: float = 0.5) -> list:
    """Assign detections to labelled hands.

    gt2d: per labelled hand its (21,2) keypoints or None; visible: per hand
    (21,) bool or None; dets: :class:`handfit.detect.Detection` list. A pair
    counts when the mean distance of the visible keypoints is under
    ``threshold`` times the labelled hand's size (the longer side of its
    keypoints' box); pairs are taken closest first. -> per labelled hand a
    detection index or None.
    """
    pairs = []
    for i, (g, v) in enumerate(zip(gt2d, visible)):
        if g is None:
            continue
        v = np.ones(21, bool) if v is None else np.asarray(v, bool)
        if not v.any():
            continue
        size = max(float(np.ptp(g[v], axis=0).max()), 1.0)
        for j, d in enumerate(dets):
            dist = float(np.linalg.norm(np.asarray(d.keypoints)[v] - g[v], axis=-1).mean()) / size
            if dist < threshold:
                pairs.append((dist, i, j))
    out = [None] * len(gt2d)
    used = set()
    for _, i, j in sorted(pairs):
        if out[i] is None and j not in used:
            out[i] = j
            used.add(j)
    return out


class EvalSession:
    """One evaluation's setup and teardown; use it as a context manager.

    Args:
        options: :class:`handfit.FitOptions` (default: the defaults); each evaluation sets its
            ``dense.enabled`` per variant (:func:`with_dense`).
        total: images the progress bar counts.
        use_label_camera: fit with each record's K; False uses the options'
            camera (``intrinsics``/``focal``/EXIF/default), as for a new photo.
        match_threshold: see :func:`match_hands`.
        progress: draw a progress bar on stderr.
        detector: object with ``detect(rgb) -> [Detection]`` (default: MediaPipe from ``resources``).
        fit_batch: the single-photo fitting function (default :func:`handfit.api.fit_batch` with ``resources``).
        warmup: before the first timed fit, run a throw-away fit of two iterations
            per stage, so that one-off costs (JIT compilation, caches, thread
            pools) do not land in the first hand's seconds.
        resources: the :class:`handfit.fitting.resources.Resources` detection and
            fitting use (default: a new one, closed with the session).
        keep_meshes: the dense variant's predictions also keep each hand's ``mesh``
            (:func:`mesh_of`), for the texture scores; whoever sets it drops them when done.
    """

    def __init__(self, options=None, total: int = 0, *, use_label_camera: bool = True, match_threshold: float = 0.5,
                 progress: bool = False, detector=None, fit_batch: Callable | None = None, warmup: bool = True,
                 resources=None, keep_meshes: bool = False):
        if options is None:
            from ..api import FitOptions

            options = FitOptions()
        self.options = options
        self.use_label_camera = use_label_camera
        self.match_threshold = match_threshold
        self.warmup = warmup
        self.keep_meshes = keep_meshes
        self.own_resources = resources is None
        if self.own_resources:
            from ..fitting.resources import Resources

            resources = Resources()
        self.resources = resources
        self.bar = None
        try:
            if fit_batch is None:
                import functools

                from ..api import fit_batch as api_fit_batch

                fit_batch = functools.partial(api_fit_batch, resources=resources)
            self.fit_batch = fit_batch
            if detector is None:
                detector = resources.detector(getattr(options, "detect", "fast"), options.max_hands)
            self.detector = detector
            if progress:
                import sys

                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="eval", unit="img", file=sys.stderr)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "EvalSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the progress bar and the Resources the session opened (not those it was given)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.own_resources and self.resources is not None:
            self.resources.close()
            self.resources = None

    def detect(self, rec: Record) -> tuple:
        """:func:`detect_record` with the session's detector and match threshold."""
        return detect_record(rec, self.detector, self.match_threshold)

    def warm_up(self, job: tuple, opts) -> None:
        """The first time only: one short fit of ``job``'s first hand with ``opts``, so that the
        first timed fit does not pay for caches and compilation. A failure is left to the timed
        fit to record."""
        if not self.warmup:
            return
        self.warmup = False
        rec, photo, dets, _ = job
        quick = dataclasses.replace(opts, keypoint=dataclasses.replace(opts.keypoint, iters=2),
                                    dense=dataclasses.replace(opts.dense, iters=2, fine_iters=1, texture_iters=1))
        try:
            self.fit_batch([photo], detections=[dets[:1]], intrinsics=[self._camera(rec)], options=quick)
        except Exception:  # noqa: BLE001 - the timed fit of that image will record the failure
            pass

    def fit(self, jobs: list, fitted: tuple, opts, on_fit: Callable | None = None) -> None:
        """Fit the jobs (:func:`make_job`) together with ``opts`` and store each matched hand's
        ``fitted`` variants; image by image when the batch fails: an image whose fit raises keeps
        its MediaPipe prediction, loses the fitted ones and records the error (KeyboardInterrupt
        passes). ``on_fit(record, FitResult)`` is called after each fitted image."""
        try:
            self._fit(jobs, fitted, opts, on_fit)
        except Exception as exc:  # noqa: BLE001
            if len(jobs) > 1:
                for job in jobs:
                    self.fit([job], fitted, opts, on_fit)
                return
            drop_fits([e for e, _ in jobs[0][3]], fitted, "fit failed", exc)

    def _fit(self, jobs, fitted, opts, on_fit):
        """Fit the matched detections of each job and store each variant's prediction."""
        results = self.fit_batch([photo for _, photo, _, _ in jobs], detections=[d for _, _, d, _ in jobs],
                                 intrinsics=[self._camera(rec) for rec, _, _, _ in jobs], options=opts)
        missing_kp = []
        quality = getattr(opts, "quality", None)
        for (rec, _, _, pairs), res in zip(jobs, results):
            if on_fit is not None:
                on_fit(rec, res)
            used: list = []
            for e, d in pairs:
                h = _result_for(res.hands, d, used)
                if h is None:
                    continue
                used.append(h)
                if opts.dense.enabled:
                    e.preds["dense"] = {"kp3d": h.keypoints_3d, "kp2d": h.keypoints_2d_fitted, "seconds": h.seconds,
                                        "side": h.side, **verdict_of(h)}
                    if self.keep_meshes:
                        e.preds["dense"]["mesh"] = mesh_of(h, getattr(res, "K", None))
                    kp = getattr(h, "stages", {}).get("keypoint")
                    if "keypoint" in fitted:
                        if kp is None:
                            missing_kp.append((e, d))
                        else:
                            e.preds["keypoint"] = {"kp3d": kp["keypoints_3d"], "kp2d": kp["keypoints_2d"],
                                                   "seconds": h.metrics.get("keypoint_seconds", float("nan")),
                                                   "side": h.side, **stage_verdict(h, kp["keypoints_2d"], quality)}
                else:
                    e.preds["keypoint"] = {"kp3d": h.keypoints_3d, "kp2d": h.keypoints_2d_fitted,
                                           "seconds": h.seconds, "side": h.side, **verdict_of(h)}
        if missing_kp:  # the API gave no keypoint-stage result: fit those detections again without the dense stage
            sub = [(rec, photo, dets, [p for p in pairs if any(p[0] is e for e, _ in missing_kp)])
                   for rec, photo, dets, pairs in jobs]
            sub = [j for j in sub if j[3]]
            self._fit(sub, ("keypoint",), with_dense(opts, False), None)

    def _camera(self, rec: Record):
        """The K a record is fitted with: its label's, or None for the options' camera."""
        return rec.K if self.use_label_camera else None

    def advance(self, n: int, hands: list, variants: tuple) -> None:
        """``n`` more images done: move the progress bar and show each variant's mean PA-MPJPE so far."""
        if self.bar is None:
            return
        self.bar.update(n)
        parts = {}
        for v in variants:
            errs = [M.pa_mpjpe(e.preds[v]["kp3d"], e.gt3d)[0] * 1000 for e in hands
                    if v in e.preds and e.gt3d is not None and e.preds[v]["kp3d"] is not None]
            if errs:
                parts[{"sequence_keypoint": "sk", "sequence_dense": "sd"}.get(v, v[:2])] = f"{np.mean(errs):.2f}"
        self.bar.set_postfix(parts, refresh=False)


def mesh_of(h, K) -> dict:
    """A fitted hand's textured mesh in its photo, as :func:`handfit.eval.texture.run_scores`
    reads it: ``K`` (3,3), ``vertices`` (V,3) metres, ``faces``, ``uv``, ``uv_faces``, ``texture``
    (T,T,3) uint8; None for a hand without them (a stand-in fitting function's)."""
    if K is None or getattr(h, "vertices", None) is None or getattr(h, "texture", None) is None:
        return None
    return {"K": np.asarray(K, np.float64), "vertices": h.vertices, "faces": h.faces, "uv": h.uv_coords,
            "uv_faces": h.uv_faces, "texture": h.texture}


def verdict_of(h) -> dict:
    """A fitted hand's verdict and evidence, kept with a variant's prediction: ``quality``
    ("ok" | "suspect"; None when the fitting function gave none), ``quality_reasons``,
    ``kp2d_max_rel`` (its joint furthest from the evidence, in box sides) and ``detected_2d``
    (the evidence, ``keypoints_2d_detected`` (21,2) pixels; None when the hand has none)."""
    from ..fitting.quality import SIGNALS

    metrics = getattr(h, "metrics", None) or {}
    rel = metrics.get("kp2d_max_rel")
    det = getattr(h, "keypoints_2d_detected", None)
    return {"quality": getattr(h, "quality", None), "quality_reasons": list(getattr(h, "quality_reasons", None) or []),
            "kp2d_max_rel": float("nan") if rel is None else float(rel),
            "detected_2d": None if det is None else np.asarray(det, np.float64),
            "signals": {k: metrics[k] for k in SIGNALS if k in metrics}}


def stage_verdict(h, kp2d: np.ndarray, q) -> dict:
    """:func:`verdict_of` for the keypoint stage of a hand that went on to the dense stage
    (``h.stages["keypoint"]``, its 2D keypoints kp2d (21,2)): the keypoint fit's own distance
    from the evidence, judged with ``q`` (``FitOptions.quality``); the other signals (start,
    views, score, side, joint limits) are the final hand's. Without the hand's signals (a
    stand-in fitting function) its quality is None."""
    from ..fitting.quality import evidence_distance, verdict

    out = verdict_of(h)
    ev = out["detected_2d"]
    if ev is None:
        return out
    far, _ = evidence_distance(kp2d, ev)
    out["kp2d_max_rel"] = far["kp2d_max_rel"]
    metrics = getattr(h, "metrics", None) or {}
    needed = ("start_rel", "spread_rel", "score", "limit_frac", "side_margin")
    if q is None or out["quality"] is None or not all(k in metrics for k in needed):
        out["quality"], out["quality_reasons"] = None, []
        return out
    sig = {**{k: metrics[k] for k in needed}, "world_rel": metrics.get("world_rel"), **far}
    out["quality"], out["quality_reasons"] = verdict(sig, q)
    out["signals"] = {**out["signals"], **far}
    return out


def known_variants(variants, known: tuple) -> tuple:
    """``variants`` in ``known``'s order; UsageError names any unknown one."""
    unknown = set(variants) - set(known)
    if unknown:
        from ..errors import UsageError

        raise UsageError(f"unknown variants {sorted(unknown)}; expected some of {known}")
    return tuple(v for v in known if v in variants)


def detect_record(rec: Record, detector, match_threshold: float = 0.5) -> tuple:
    """Read one record's image, detect its hands once and match them to its labels.

    -> (evs, photo, pairs): one :class:`HandEval` per labelled hand (a detected one
    holds its ``mediapipe`` prediction), the loaded :class:`handfit.io.image.Photo`
    (None when unreadable) and [(HandEval, Detection)] of the matched hands. An image
    that cannot be read or detected never raises: its hands get the ``error``.
    """
    from ..errors import ImageError
    from ..io.image import load_image

    evs = [HandEval(rec.name, i, h.side, h.keypoints_3d, rec.keypoints_2d(h), h.visible)
           for i, h in enumerate(rec.hands)]
    # One bad image is recorded (its hands count as missed) and never ends the run.
    try:
        photo = load_image(rec.image)
    except ImageError as exc:
        _fail(evs, str(exc))
        return evs, None, []
    except Exception as exc:  # noqa: BLE001
        _fail(evs, f"{rec.image}: cannot read: {_describe(exc)}")
        return evs, None, []
    try:
        t = time.perf_counter()
        dets = list(detector.detect(photo.rgb))
        det_s = (time.perf_counter() - t) / max(len(dets), 1)
    except Exception as exc:  # noqa: BLE001
        _fail(evs, f"detection failed: {_describe(exc)}")
        return evs, photo, []
    assign = match_hands([e.gt2d for e in evs], [e.visible for e in evs], dets, match_threshold)
    pairs = []
    for e, j in zip(evs, assign):
        e.n_detections = len(dets)
        if j is None:
            continue
        d = dets[j]
        e.detected, e.det_side, e.det_score = True, d.side, float(d.score)
        e.preds["mediapipe"] = {"kp3d": np.asarray(d.world, np.float64),
                                "kp2d": np.asarray(d.keypoints, np.float64), "seconds": det_s}
        pairs.append((e, d))
    return evs, photo, pairs


def _describe(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _fail(evs, message: str):
    for e in evs:
        e.error = message


def drop_fits(evs: list, variants, what: str, exc: BaseException) -> None:
    """A fit of these hands raised: they lose the ``variants``' predictions and record
    ``"<what>: <exception>"`` as their error (their MediaPipe prediction stays)."""
    for e in evs:
        for v in variants:
            e.preds.pop(v, None)
    _fail(evs, f"{what}: {_describe(exc)}")


def with_dense(opts, enabled: bool):
    """A copy of FitOptions ``opts`` with the dense stage on or off."""
    return dataclasses.replace(opts, dense=dataclasses.replace(opts.dense, enabled=enabled))


def make_job(rec, photo, pairs) -> tuple:
    """A fit job: (record, photo, its matched detections best first, [(HandEval, det)])."""
    return rec, photo, [d for _, d in sorted(pairs, key=lambda p: -p[1].score)], pairs


def _result_for(hands, det, used=()):
    """The fitted hand made from detection ``det``: the unused one whose detected
    keypoints are nearest det's (a copy, unless the fit's side check re-detected it)."""
    best, best_d = None, np.inf
    for h in hands:
        if any(h is u for u in used):
            continue
        d = float(np.linalg.norm(np.asarray(h.keypoints_2d_detected) - np.asarray(det.keypoints), axis=-1).mean())
        if d < best_d:
            best, best_d = h, d
    return best
