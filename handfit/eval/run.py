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

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from . import metrics as M
from .records import Record
from .session import EvalSession, HandEval, detect_record, known_variants, make_job, match_hands, with_dense

__all__ = ["VARIANTS", "HandEval", "Evaluation", "evaluate", "detect_record", "match_hands", "score"]

VARIANTS = ("mediapipe", "keypoint", "dense")
#: Keys of each variant's summary (the ``metrics.json`` schema); after them, ``suspect``.
SUMMARY_KEYS = ("pa_mpjpe_mm", "rr_mpjpe_mm", "auc_0_50", "kp2d_px", "recall", "wrong_side", "s_per_hand", "n")
#: Variants that are fits, with a verdict per hand (``quality``, handfit/fitting/quality.py).
FITTED = ("keypoint", "dense", "sequence_keypoint", "sequence_dense")


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


def evaluate(records: Iterable[Record], options=None, variants=VARIANTS, batch_size: int = 1,
             on_fit: Callable | None = None, on_chunk: Callable | None = None, **session) -> Evaluation:
    """Fit and measure every record.

    Args:
        records: :class:`Record` objects (see :mod:`handfit.eval.datasets`).
        options: :class:`handfit.FitOptions` (its ``dense.enabled`` is set per variant).
        variants: some of :data:`VARIANTS`; ``mediapipe`` costs nothing extra.
        batch_size: images fitted together. 1 (the default) fits each image on
            its own, exactly as ``handfit fit`` would; larger batches are faster
            on a GPU but change results slightly (a batch runs until every hand
            in it has converged).
        on_fit: called as ``on_fit(record, FitResult)`` after each fitted image.
        on_chunk: called as ``on_chunk(Evaluation)`` with the images done so far
            after each batch (the CLI writes its files then, so an interrupted
            run leaves its results).
        session: the keyword arguments of :class:`~handfit.eval.session.EvalSession`:
            ``use_label_camera``, ``match_threshold``, ``progress``, ``detector``,
            ``fit_batch``, ``warmup`` and ``resources``.

    An image that cannot be read, detected or fitted never ends the run: its
    hands get the ``error`` (and count as missed for the fitted variants).
    """
    variants = known_variants(variants, VARIANTS)
    fitted = tuple(v for v in variants if v != "mediapipe")
    records = list(records)
    bs = max(1, int(batch_size))
    hands: list = []
    with EvalSession(options, len(records), **session) as s:
        opts = with_dense(s.options, "dense" in fitted)
        for start in range(0, len(records), bs):
            chunk = records[start:start + bs]
            jobs = []  # (record, photo, detections to fit, [(HandEval, det)])
            for rec in chunk:
                evs, photo, pairs = s.detect(rec)
                hands.extend(evs)
                if pairs and fitted:
                    jobs.append(make_job(rec, photo, pairs))
            if jobs:
                s.warm_up(jobs[0], opts)
                s.fit(jobs, fitted, opts, on_fit)
            s.advance(len(chunk), hands, variants)
            if on_chunk is not None:
                on_chunk(Evaluation(variants, hands, *score(hands, variants), M.PCK_THRESHOLDS_MM.copy()))
    rows, summary, curves = score(hands, variants)
    return Evaluation(variants, hands, rows, summary, curves, M.PCK_THRESHOLDS_MM.copy())


def _nanmean(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def score(hands: list, variants=VARIANTS, thresholds_mm=M.PCK_THRESHOLDS_MM) -> tuple:
    """Measure every variant on every hand (batched) -> (rows, summary, curves).

    rows: one dict per labelled hand (a fitted variant's also with its verdict:
    ``<v>_quality``, ``<v>_quality_reasons`` joined by "; ", ``<v>_kp2d_max_rel``);
    summary[variant]: :data:`SUMMARY_KEYS` (means over the detected hands; ``recall`` over
    all labelled hands; ``auc_0_50`` from the pooled per-joint PA errors), then ``suspect``
    (hands the verdict calls suspect; None without verdicts); curves[variant]: (T,)
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
            if v in FITTED:
                p = hands[i].preds.get(v, {})
                r.update({f"{v}_quality": p.get("quality") or "",
                          f"{v}_quality_reasons": "; ".join(p.get("quality_reasons") or []),
                          f"{v}_kp2d_max_rel": float(p.get("kp2d_max_rel", float("nan")))})
        judged = [hands[i].preds[v].get("quality") for i in idx if hands[i].preds[v].get("quality") is not None]
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
            # hands of the n the verdict calls suspect (None: no verdict, as for MediaPipe's own)
            "suspect": sum(q == "suspect" for q in judged) if judged else None,
        }
    return rows, summary, curves
