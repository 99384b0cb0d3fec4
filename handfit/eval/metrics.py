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
"""

from __future__ import annotations

import numpy as np

__all__ = ["similarity_align", "pa_errors", "pa_mpjpe", "rr_errors", "rr_mpjpe", "kp2d_errors", "pck", "auc",
           "PCK_THRESHOLDS_MM"]

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
