"""Fit every labelled image of a dataset and measure the fits against its labels.

:func:`evaluate` detects the hands of each image once (MediaPipe), matches
the detections to the labelled hands, then fits the matched detections with
``handfit.fit_batch(..., detections=..., intrinsics=...)`` using each image's
ground-truth camera. Variants, all measured on the same detections:

* ``mediapipe``: MediaPipe's own world landmarks (3D) and landmarks (2D): the
  floor a fit must beat to add anything;
* ``keypoint``: the keypoint-stage fit;
* ``dense``: the full fit with the dense stage.

Asking for both ``keypoint`` and ``dense`` runs the fit once: the API keeps
the keypoint-stage result of every hand before the dense stage starts
(``HandResult.stages["keypoint"]``) and times both stages.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from . import metrics as M
from .records import Record

__all__ = ["VARIANTS", "HandEval", "Evaluation", "evaluate", "detect_record", "match_hands", "score"]

VARIANTS = ("mediapipe", "keypoint", "dense")
#: Keys of each variant's summary (the ``metrics.json`` schema).
SUMMARY_KEYS = ("pa_mpjpe_mm", "rr_mpjpe_mm", "auc_0_50", "kp2d_px", "recall", "wrong_side", "s_per_hand", "n")


@dataclass
class HandEval:
    """One labelled hand and what each variant predicted for it.

    ``preds[variant]`` = {"kp3d": (21,3) metres or None, "kp2d": (21,2) pixels,
    "seconds": float}; empty when the hand was not detected.
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


@dataclass
class Evaluation:
    """What :func:`evaluate` measured. ``summary[variant]`` has :data:`SUMMARY_KEYS`;
    ``rows`` one dict per labelled hand; ``curves[variant]`` the PCK curve over
    ``thresholds_mm``."""

    variants: tuple
    hands: list
    rows: list
    summary: dict
    curves: dict
    thresholds_mm: np.ndarray


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


def _fit_variants(variants) -> tuple:
    want = [v for v in variants if v != "mediapipe"]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        from ..errors import UsageError

        raise UsageError(f"unknown variants {sorted(unknown)}; expected some of {VARIANTS}")
    return tuple(want)


def evaluate(records: Iterable[Record], options=None, variants=("mediapipe", "keypoint", "dense"),
             batch_size: int = 1, use_label_camera: bool = True, match_threshold: float = 0.5,
             progress: bool = False, detector=None, fit_batch: Callable | None = None,
             on_fit: Callable | None = None, on_chunk: Callable | None = None, warmup: bool = True,
             resources=None) -> Evaluation:
    """Fit and measure every record.

    Args:
        records: :class:`Record` objects (see :mod:`handfit.eval.datasets`).
        options: :class:`handfit.FitOptions` (its ``dense.enabled`` is set per variant).
        variants: some of :data:`VARIANTS`; ``mediapipe`` costs nothing extra.
        batch_size: images fitted together. 1 (the default) fits each image on
            its own, exactly as ``handfit fit`` would; larger batches are faster
            on a GPU but change results slightly (a batch runs until every hand
            in it has converged).
        use_label_camera: fit with each record's K; False uses the options'
            camera (``intrinsics``/``focal``/EXIF/default), as for a new photo.
        match_threshold: see :func:`match_hands`.
        progress: draw a progress bar on stderr.
        detector: object with ``detect(rgb) -> [Detection]`` (default: MediaPipe).
        fit_batch: the fitting function (default :func:`handfit.api.fit_batch` with ``resources``).
        resources: the :class:`handfit.fitting.resources.Resources` detection and
            fitting use (default: a new one, closed at the end).
        on_fit: called as ``on_fit(record, FitResult)`` after each fitted image.
        on_chunk: called as ``on_chunk(Evaluation)`` with the images done so far
            after each batch (the CLI writes its files then, so an interrupted
            run leaves its results).

    An image that cannot be read, detected or fitted never ends the run: its
    hands get the ``error`` (and count as missed for the fitted variants).
        warmup: before the first timed fit, run a throw-away fit of two iterations
            per stage, so that one-off costs (JIT compilation, caches, thread
            pools) do not land in the first hand's seconds.
    """
    if options is None:
        from ..api import FitOptions

        options = FitOptions()
    fitted = _fit_variants(variants)
    variants = tuple(v for v in VARIANTS if v in variants)
    own_resources = resources is None
    if own_resources:
        from ..fitting.resources import Resources

        resources = Resources()
    if fit_batch is None:
        import functools

        from ..api import fit_batch as api_fit_batch

        fit_batch = functools.partial(api_fit_batch, resources=resources)
    opts = _with_dense(options, "dense" in fitted)
    if detector is None:
        detector = resources.detector(getattr(options, "detect", "fast"), options.max_hands)
    records = list(records)
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(records), desc="eval", unit="img", file=sys.stderr)
    hands: list = []
    try:
        for start in range(0, len(records), max(1, int(batch_size))):
            chunk = records[start:start + max(1, int(batch_size))]
            jobs = []  # (record, photo, detections to fit, [(HandEval, det)])
            for rec in chunk:
                evs, photo, pairs = detect_record(rec, detector, match_threshold)
                hands.extend(evs)
                if pairs and fitted:
                    jobs.append(_job(rec, photo, pairs))
            if jobs and warmup:
                _warm_up(jobs[0], opts, use_label_camera, fit_batch)
                warmup = False
            if jobs:
                _fit_jobs_safe(jobs, fitted, opts, use_label_camera, fit_batch, on_fit)
            if bar is not None:
                bar.update(len(chunk))
                _postfix(bar, hands, variants)
            if on_chunk is not None:
                on_chunk(Evaluation(variants, hands, *score(hands, variants), M.PCK_THRESHOLDS_MM.copy()))
    finally:
        if bar is not None:
            bar.close()
        if own_resources:
            resources.close()
    rows, summary, curves = score(hands, variants)
    return Evaluation(variants, hands, rows, summary, curves, M.PCK_THRESHOLDS_MM.copy())


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


def _fit_jobs_safe(jobs, fitted, opts, use_label_camera, fit_batch, on_fit):
    """:func:`_fit_jobs`, image by image when a batch fails: an image whose fit
    raises keeps its MediaPipe prediction, loses the fitted ones and records
    the error (KeyboardInterrupt passes)."""
    try:
        _fit_jobs(jobs, fitted, opts, use_label_camera, fit_batch, on_fit)
    except Exception as exc:  # noqa: BLE001
        if len(jobs) > 1:
            for job in jobs:
                _fit_jobs_safe([job], fitted, opts, use_label_camera, fit_batch, on_fit)
            return
        evs = [e for e, _ in jobs[0][3]]
        for e in evs:
            for v in fitted:
                e.preds.pop(v, None)
        _fail(evs, f"fit failed: {_describe(exc)}")


def _fit_jobs(jobs, fitted, opts, use_label_camera, fit_batch, on_fit):
    """Fit the matched detections of each job and store each variant's prediction."""
    Ks = [rec.K if use_label_camera else None for rec, _, _, _ in jobs]
    results = fit_batch([photo for _, photo, _, _ in jobs], detections=[d for _, _, d, _ in jobs],
                        intrinsics=Ks, options=opts)
    missing_kp = []
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
                                    "side": h.side}
                kp = getattr(h, "stages", {}).get("keypoint")
                if "keypoint" in fitted:
                    if kp is None:
                        missing_kp.append((e, d))
                    else:
                        e.preds["keypoint"] = {"kp3d": kp["keypoints_3d"], "kp2d": kp["keypoints_2d"],
                                               "seconds": h.metrics.get("keypoint_seconds", float("nan")),
                                               "side": h.side}
            else:
                e.preds["keypoint"] = {"kp3d": h.keypoints_3d, "kp2d": h.keypoints_2d_fitted, "seconds": h.seconds,
                                       "side": h.side}
    if missing_kp:  # the API gave no keypoint-stage result: fit those detections again without the dense stage
        sub = [(rec, photo, dets, [p for p in pairs if any(p[0] is e for e, _ in missing_kp)])
               for rec, photo, dets, pairs in jobs]
        sub = [j for j in sub if j[3]]
        _fit_jobs(sub, ("keypoint",), _with_dense(opts, False), use_label_camera, fit_batch, None)


def _with_dense(opts, enabled: bool):
    """A copy of FitOptions ``opts`` with the dense stage on or off."""
    return dataclasses.replace(opts, dense=dataclasses.replace(opts.dense, enabled=enabled))


def _job(rec, photo, pairs) -> tuple:
    """A fit job: (record, photo, its matched detections best first, [(HandEval, det)])."""
    return rec, photo, [d for _, d in sorted(pairs, key=lambda p: -p[1].score)], pairs


def _warm_up(job, opts, use_label_camera, fit_batch):
    """One short fit of ``job``'s first hand, so the first timed fit does not pay for
    caches and compilation. A failure is left to the timed fit to record."""
    rec, photo, dets, _ = job
    quick = dataclasses.replace(opts, keypoint=dataclasses.replace(opts.keypoint, iters=2),
                                dense=dataclasses.replace(opts.dense, iters=2, fine_iters=1, texture_iters=1))
    try:
        fit_batch([photo], detections=[dets[:1]], intrinsics=[rec.K if use_label_camera else None], options=quick)
    except Exception:  # noqa: BLE001 - the timed fit of that image will record the failure
        pass


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


def _postfix(bar, hands, variants):
    parts = {}
    for v in variants:
        errs = [M.pa_mpjpe(e.preds[v]["kp3d"], e.gt3d)[0] * 1000 for e in hands
                if v in e.preds and e.gt3d is not None and e.preds[v]["kp3d"] is not None]
        if errs:
            parts[{"sequence_keypoint": "sk", "sequence_dense": "sd"}.get(v, v[:2])] = f"{np.mean(errs):.2f}"
    bar.set_postfix(parts, refresh=False)


def _nanmean(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def score(hands: list, variants=VARIANTS, thresholds_mm=M.PCK_THRESHOLDS_MM) -> tuple:
    """Measure every variant on every hand (batched) -> (rows, summary, curves).

    rows: one dict per labelled hand; summary[variant]: :data:`SUMMARY_KEYS`
    (means over the detected hands; ``recall`` over all labelled hands;
    ``auc_0_50`` from the pooled per-joint PA errors); curves[variant]: (T,)
    PCK of the PA-aligned per-joint errors at ``thresholds_mm``.
    """
    rows = [{"image": e.record, "hand": e.hand, "side": e.side or "", "detected": int(e.detected),
             "detected_side": e.det_side or "", "wrong_side": int(e.wrong_side), "score": e.det_score,
             "detections": e.n_detections, "error": e.error or ""} for e in hands]
    summary, curves = {}, {}
    total = len(hands)
    for v in variants:
        idx = [i for i, e in enumerate(hands) if v in e.preds]
        pa = np.full(total, np.nan)
        rr = np.full(total, np.nan)
        au = np.full(total, np.nan)
        k2 = np.full(total, np.nan)
        sec = np.full(total, np.nan)
        joint_errs = []
        with3d = [i for i in idx if hands[i].gt3d is not None and hands[i].preds[v]["kp3d"] is not None]
        if with3d:
            pred = np.stack([hands[i].preds[v]["kp3d"] for i in with3d]) * 1000.0
            gt = np.stack([hands[i].gt3d for i in with3d]) * 1000.0
            pe = M.pa_errors(pred, gt)                                   # (n,21) mm
            pa[with3d] = pe.mean(-1)
            rr[with3d] = M.rr_mpjpe(pred, gt)
            au[with3d] = [M.auc(M.pck(p, thresholds_mm), thresholds_mm) for p in pe]
            joint_errs = pe
        with2d = [i for i in idx if hands[i].gt2d is not None]
        if with2d:
            k2[with2d] = M.kp2d_errors(np.stack([hands[i].preds[v]["kp2d"] for i in with2d]),
                                       np.stack([hands[i].gt2d for i in with2d]),
                                       np.stack([hands[i].visible if hands[i].visible is not None
                                                 else np.ones(21, bool) for i in with2d]))
        for i in idx:
            sec[i] = hands[i].preds[v]["seconds"]
        for i, r in enumerate(rows):
            r.update({f"{v}_pa_mpjpe_mm": pa[i], f"{v}_rr_mpjpe_mm": rr[i], f"{v}_auc_0_50": au[i],
                      f"{v}_kp2d_px": k2[i], f"{v}_seconds": sec[i]})
        curve = M.pck(joint_errs, thresholds_mm) if len(joint_errs) else np.full(len(thresholds_mm), np.nan)
        curves[v] = curve
        summary[v] = {
            "pa_mpjpe_mm": _nanmean(pa), "rr_mpjpe_mm": _nanmean(rr),
            "auc_0_50": M.auc(curve, thresholds_mm) if np.isfinite(curve).all() else float("nan"),
            "kp2d_px": _nanmean(k2),
            "recall": sum(e.detected for e in hands) / total if total else float("nan"),
            # the fit's side where it has one: the fit may check and change the detector's side
            "wrong_side": int(sum(e.side is not None and e.preds[v].get("side", e.det_side) != e.side
                                  for e in (hands[i] for i in idx))),
            "s_per_hand": _nanmean(sec), "n": len(idx),
        }
    return rows, summary, curves
