"""Accuracy measures for 3D hand keypoints: pure, batched numpy functions.

Every function takes batches: ``B`` hands of ``N`` keypoints. Units are
whatever the inputs use (the evaluation passes millimetres and pixels).

* :func:`similarity_align` / :func:`pa_errors` / :func:`pa_mpjpe`: Procrustes
  alignment with scale (Umeyama) and a proper rotation (no reflection: a
  mirrored hand is an error, not a match). This differs from the FreiHAND and
  HO3D evaluation scripts, whose alignment (scipy's orthogonal_procrustes,
  no determinant correction) lets a reflection count as a match: our PA
  errors can only be equal or larger on the same predictions.
* :func:`rr_mpjpe`: root-relative error, both sets translated to their root
  (wrist) joint, no rotation or scale.
* :func:`pck` and :func:`auc`: the fraction of keypoints under each threshold
  and the normalised area under that curve (FreiHAND: 0-50 mm, 100 steps).
* :func:`accel_errors`: the acceleration error of root-relative keypoints
  along a sequence (units per frame², as in HMMR and VIBE).
"""

from __future__ import annotations

import numpy as np

__all__ = ["similarity_align", "pa_errors", "pa_mpjpe", "rr_errors", "rr_mpjpe", "kp2d_errors", "pck", "auc",
           "accel_errors", "PCK_THRESHOLDS_MM"]

#: Thresholds of the 3D PCK curve, 0 to 50 mm in 100 steps (FreiHAND's curve).
PCK_THRESHOLDS_MM = np.linspace(0.0, 50.0, 101)


def _batch(a, d: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != d:
        raise ValueError(f"expected (B,N,{d}) or (N,{d}) points, got shape {a.shape}")
    return a


def similarity_align(pred, gt) -> np.ndarray:
    """``pred`` moved onto ``gt`` by the best similarity transform.

    pred, gt: ``(B,N,3)`` (or ``(N,3)``) corresponding points. Finds the
    scale ``s``, proper rotation ``R`` (det +1) and translation ``t``
    minimising ``sum_i |s R pred_i + t - gt_i|^2`` (Umeyama 1991) and returns
    ``s R pred + t``, ``(B,N,3)``.
    """
    p, g = _batch(pred, 3), _batch(gt, 3)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ")
    mp, mg = p.mean(1, keepdims=True), g.mean(1, keepdims=True)
    pc, gc = p - mp, g - mg
    H = pc.transpose(0, 2, 1) @ gc                                   # (B,3,3)
    U, S, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(U @ Vt))                              # -1: the best fit would be a reflection
    d = np.where(d == 0, 1.0, d)
    D = np.ones((p.shape[0], 3))
    D[:, 2] = d
    R = (U * D[:, None, :]) @ Vt                                    # rotation applied as x @ R
    var = (pc ** 2).sum((1, 2))
    s = (S * D).sum(1) / np.maximum(var, 1e-300)                    # (B,)
    return s[:, None, None] * (pc @ R) + mg


def pa_errors(pred, gt) -> np.ndarray:
    """Per-keypoint distances after :func:`similarity_align`. -> ``(B,N)``"""
    return np.linalg.norm(similarity_align(pred, gt) - _batch(gt, 3), axis=-1)


def pa_mpjpe(pred, gt) -> np.ndarray:
    """Procrustes-aligned mean per-joint position error. -> ``(B,)``"""
    return pa_errors(pred, gt).mean(-1)


def rr_errors(pred, gt, root: int = 0) -> np.ndarray:
    """Per-keypoint distances with both sets moved to their ``root`` joint. -> ``(B,N)``"""
    p, g = _batch(pred, 3), _batch(gt, 3)
    return np.linalg.norm((p - p[:, root:root + 1]) - (g - g[:, root:root + 1]), axis=-1)


def rr_mpjpe(pred, gt, root: int = 0) -> np.ndarray:
    """Root-relative mean per-joint position error (no rotation or scale). -> ``(B,)``"""
    return rr_errors(pred, gt, root).mean(-1)


def kp2d_errors(pred, gt, visible=None) -> np.ndarray:
    """Mean 2D distance per hand over its visible keypoints.

    pred, gt: ``(B,N,2)``; visible: ``(B,N)`` bool or None (all). A hand with
    no visible keypoint gives NaN. -> ``(B,)``
    """
    p, g = _batch(pred, 2), _batch(gt, 2)
    e = np.linalg.norm(p - g, axis=-1)
    v = np.ones(e.shape, bool) if visible is None else np.asarray(visible, bool).reshape(e.shape)
    n = v.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (e * v).sum(-1) / n, np.nan)


def accel_errors(pred, gt, valid=None, root: int = 0) -> np.ndarray:
    """Acceleration error per frame of one sequence of ``T`` frames.

    pred, gt: ``(T,N,3)`` keypoints of consecutive frames; valid: ``(T,)`` bool,
    the frames that have a prediction (None: all). Both sets are made relative
    to their ``root`` keypoint, so that only the hand's articulation counts, not
    its travel. The acceleration of frame ``t`` is the second difference
    ``x[t-1] - 2 x[t] + x[t+1]``; its error is the mean over keypoints of
    ``|accel_pred - accel_gt|``. -> ``(T,)``: NaN for the first and last frame
    and wherever ``t-1``, ``t`` or ``t+1`` is not valid (or has a NaN).
    """
    p, g = _batch(pred, 3), _batch(gt, 3)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ")
    T = p.shape[0]
    out = np.full(T, np.nan)
    if T < 3:
        return out
    v = np.ones(T, bool) if valid is None else np.asarray(valid, bool).reshape(T)
    p = np.where(v[:, None, None], p, np.nan)                       # an invalid frame poisons its neighbours
    p, g = p - p[:, root:root + 1], g - g[:, root:root + 1]
    acc_p = p[:-2] - 2 * p[1:-1] + p[2:]                            # (T-2,N,3), charged to the middle frame
    acc_g = g[:-2] - 2 * g[1:-1] + g[2:]
    out[1:-1] = np.linalg.norm(acc_p - acc_g, axis=-1).mean(-1)
    return out


def pck(errors, thresholds=PCK_THRESHOLDS_MM) -> np.ndarray:
    """Fraction of ``errors`` (any shape, NaNs ignored) at or below each threshold. -> ``(T,)``"""
    e = np.asarray(errors, dtype=np.float64).ravel()
    e = e[np.isfinite(e)]
    t = np.asarray(thresholds, dtype=np.float64)
    if e.size == 0:
        return np.full(t.shape, np.nan)
    return (e[None, :] <= t[:, None]).mean(1)


def auc(curve, thresholds=PCK_THRESHOLDS_MM) -> float:
    """Area under a PCK curve by the trapezoid rule, divided by the threshold
    range, so a perfect curve gives 1."""
    t = np.asarray(thresholds, dtype=np.float64)
    c = np.asarray(curve, dtype=np.float64)
    span = t[-1] - t[0]
    if not span > 0:
        raise ValueError("thresholds must increase")
    return float(np.sum((c[1:] + c[:-1]) * np.diff(t)) / 2.0 / span)
