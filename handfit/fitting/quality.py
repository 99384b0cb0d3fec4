"""A verdict on every fitted hand: ``ok``, or ``suspect`` with its reasons.

A fit can go wrong in two ways: it leaves its evidence (a start that blew up, a track frame
held by its neighbours), or it follows evidence that is itself wrong (fingers MediaPipe mixed
up). The first shows as a joint far from the evidence; the second only through signs that the
evidence is weak: the views of the crop disagreeing, a low detection score, a side the two
hand models fit about equally well, a pose pressed against its joint limits. :func:`signals`
measures each per hand (all recorded in the result's metrics, so thresholds can be studied);
:func:`verdict` compares them with ``FitOptions.quality``.

Distances are in box sides: the larger side of the box around the evidence keypoints. The
evidence is what the hand was fitted to (``keypoints_2d_detected``): for a photo the fused
views, so a fit far from MediaPipe's single view but near the fused views is no reason.
"""

from __future__ import annotations

import numpy as np

from ..keypoints import KEYPOINT_NAMES
from ..options import QualityStage

__all__ = ["SIGNALS", "evidence_distance", "signals", "verdict", "world_disagreement"]

#: The signals :func:`signals` measures, in the order they are reported.
SIGNALS = ("kp2d_max_px", "kp2d_max_rel", "kp2d_worst", "spread_rel", "limit_frac", "side_margin", "score",
           "start_rel", "world_rel")


def evidence_distance(fitted_2d: np.ndarray, evidence_2d: np.ndarray) -> tuple[dict, float]:
    """The fitted joint furthest from its evidence: ({kp2d_max_px, kp2d_max_rel (box sides of
    the evidence), kp2d_worst (joint name)}, box side px). fitted_2d, evidence_2d: (21,2) px."""
    ev = np.asarray(evidence_2d, float)
    err = np.linalg.norm(np.asarray(fitted_2d, float) - ev, axis=-1)                   # (21,)
    box = max(float(np.ptp(ev, axis=0).max()), 1.0)
    return {"kp2d_max_px": float(err.max()), "kp2d_max_rel": float(err.max() / box),
            "kp2d_worst": KEYPOINT_NAMES[int(err.argmax())]}, box


def world_disagreement(keypoints_3d: np.ndarray, world: np.ndarray) -> float | None:
    """The fitted 3D keypoints against MediaPipe's world landmarks after the best rotation,
    translation and scale: mean joint distance in palm lengths (wrist to middle knuckle of
    the landmarks). Fingers that the 2D evidence mixed up contradict the landmarks' own 3D.
    keypoints_3d, world: (21,3). None when the landmarks are missing or degenerate."""
    import torch

    from ..geometry import kabsch

    if world is None:
        return None
    a, b = np.asarray(keypoints_3d, np.float64), np.asarray(world, np.float64)
    if a.shape != (21, 3) or b.shape != (21, 3) or not np.isfinite(b).all():
        return None
    a, b = a - a.mean(0), b - b.mean(0)
    palm = float(np.linalg.norm(b[9] - b[0]))
    if palm < 1e-9 or not (a ** 2).sum() > 0:
        return None
    R = kabsch(torch.from_numpy(a[None]), torch.from_numpy(b[None]), center=False)[0].numpy()
    ra = a @ R.T
    s = float((ra * b).sum() / (ra * ra).sum())
    return float(np.linalg.norm(s * ra - b, axis=-1).mean() / palm)


def signals(fitted_2d: np.ndarray, evidence_2d: np.ndarray, pose: np.ndarray, lower: np.ndarray,
            upper: np.ndarray, detection, start_rel: float | None = None, keypoints_3d: np.ndarray | None = None
            ) -> dict:
    """One hand's quality signals.

    fitted_2d, evidence_2d: (21,2) pixels; pose (P,) with its limits lower, upper (P,);
    detection: its :class:`handfit.detect.Detection` (score, keypoint_spread, side_losses,
    world); start_rel: the kept start's mean 2D error in box sides, or None; keypoints_3d:
    the fitted (21,3), for :func:`world_disagreement` (None: not measured).
    -> {kp2d_max_px, kp2d_max_rel, kp2d_worst (joint name), spread_rel, limit_frac,
    side_margin, score, start_rel, world_rel}; a signal that does not apply is None."""
    far, box = evidence_distance(fitted_2d, evidence_2d)
    spread = getattr(detection, "keypoint_spread", None)
    losses = getattr(detection, "side_losses", None)
    margin = None
    if losses and len(losses) == 2:
        a, b = sorted(float(v) for v in losses.values())
        margin = (b - a) / max(b, 1e-12)               # 0: both sides fit alike, 1: one far better
    width = np.maximum(np.asarray(upper, float) - np.asarray(lower, float), 1e-9)
    at = (np.asarray(pose, float) <= lower + 0.02 * width) | (np.asarray(pose, float) >= upper - 0.02 * width)
    moving = width > 1e-6                              # coordinates the model can move
    return {
        **far,
        "spread_rel": None if spread is None else float(np.max(spread) / box),
        "limit_frac": float(at[moving].mean()) if moving.any() else 0.0,
        "side_margin": margin,
        "score": float(getattr(detection, "score", 1.0)),
        "start_rel": None if start_rel is None or not np.isfinite(start_rel) else float(start_rel),
        "world_rel": None if keypoints_3d is None else world_disagreement(keypoints_3d,
                                                                         getattr(detection, "world", None)),
    }


def verdict(sig: dict, q: QualityStage, side_conflict: bool = False) -> tuple[str, list]:
    """("ok", []) or ("suspect", reasons): each signal of :func:`signals` beyond its threshold
    in ``q`` gives one reason (a short phrase with its value). ``side_conflict``: the hand's
    side disagrees with its track's (a video frame MediaPipe called the other side)."""
    reasons = []
    if sig["kp2d_max_rel"] > q.max_rel:
        reasons.append(f"far from evidence: {sig['kp2d_worst']} {sig['kp2d_max_rel']:.2f} box sides "
                       f"({sig['kp2d_max_px']:.0f} px)")
    if sig["start_rel"] is not None and sig["start_rel"] > q.start_rel:
        reasons.append(f"start never near its evidence: {sig['start_rel']:.2f} box sides")
    if sig["spread_rel"] is not None and sig["spread_rel"] > q.spread_rel:
        reasons.append(f"views disagree: spread {sig['spread_rel']:.2f} box sides")
    if sig["score"] < q.min_score:
        reasons.append(f"low detection score {sig['score']:.2f}")
    if sig["limit_frac"] > q.limit_frac:
        reasons.append(f"pose against its limits: {sig['limit_frac']:.0%} of its angles")
    if sig.get("world_rel") is not None and sig["world_rel"] > q.world_rel:
        reasons.append(f"2D and 3D evidence disagree: {sig['world_rel']:.2f} palm lengths apart")
    if sig["side_margin"] is not None and sig["side_margin"] < q.side_margin:
        reasons.append(f"side uncertain: both hand models fit within {sig['side_margin']:.0%}")
    if side_conflict:
        reasons.append("side conflicts with its track")
    return ("suspect" if reasons else "ok"), reasons
