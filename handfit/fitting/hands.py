"""Detected hands as the pipeline's input: :class:`HandItem` (one hand and its photo)
and :class:`HandBatch` (B hands as tensors, made in one place: :func:`to_batch`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..options import FitOptions

__all__ = ["HandItem", "HandBatch", "to_batch", "kp_weights", "depth_refs", "usable_depth"]


@dataclass
class HandItem:
    """One detected hand to fit."""

    K: np.ndarray                   # (3,3) intrinsics of its photo
    detection: object               # handfit.detect.Detection: side, score, box_xyxy, keypoints, keypoints_z, world
    rgb: np.ndarray | None = None   # (H,W,3) uint8 photo; the side views and the dense stage need it
    frame: int | None = None        # a video frame's index in its source (a track's frames: their spacing)


@dataclass
class HandBatch:
    """The tensors of B detected hands: the one place detections become tensors."""

    K: torch.Tensor        # (B,3,3)
    kp2d: torch.Tensor     # (B,21,2) detected pixels
    world: torch.Tensor    # (B,21,3) MediaPipe world landmarks, metres
    scale: torch.Tensor    # (B,) side of the detection box, pixels
    # (B,21) per-keypoint weights of the 2D terms from the multi-view spread
    # (handfit.detect.multiview.spread_weight), or None: every keypoint alike
    kp_weight: torch.Tensor | None = None
    # (B,21,3) MediaPipe's image landmarks with their relative depth, lifted to a root depth
    # of 1 (:func:`depth_refs`; NaN rows: a hand without them), or None: the reference of the
    # keypoint stage's depth term
    depth_ref: torch.Tensor | None = None
    # (B,) each hand's frame index in its source video (a track's frames), or None: consecutive
    frames: torch.Tensor | None = None

    def select(self, idx) -> "HandBatch":
        i = torch.as_tensor(list(idx), dtype=torch.long, device=self.K.device)
        return HandBatch(self.K[i], self.kp2d[i], None if self.world is None else self.world[i], self.scale[i],
                         None if self.kp_weight is None else self.kp_weight[i],
                         None if self.depth_ref is None else self.depth_ref[i],
                         None if self.frames is None else self.frames[i])

    def gaps(self) -> torch.Tensor:
        """(B-1,) source frames between consecutive hands (a track's frames), 1 where unknown."""
        if self.frames is None:
            return self.K.new_ones(max(self.K.shape[0] - 1, 0))
        return (self.frames[1:] - self.frames[:-1]).to(self.K.dtype).clamp(min=1)


def kp_weights(dets: list, sigma: float) -> np.ndarray | None:
    """(B,21) 2D-term weights from the detections' ``keypoint_spread``, a keypoint's halved at
    a relative spread of ``sigma`` (:attr:`FitOptions.spread_sigma`), or None when no
    detection has one or ``sigma`` is 0 (a detection without one gets all ones)."""
    if sigma <= 0 or all(getattr(d, "keypoint_spread", None) is None for d in dets):
        return None
    from ..detect.multiview import spread_weight

    return np.stack([np.ones(21) if getattr(d, "keypoint_spread", None) is None
                     else spread_weight(d.keypoint_spread, float(np.ptp(d.keypoints, axis=0).max()), sigma)
                     for d in dets])


def usable_depth(det) -> bool:
    """Whether a detection carries MediaPipe's relative depths: ``keypoints_z`` present, finite
    and not all alike (a detector without depths fills in zeros, which would say "flat")."""
    z = getattr(det, "keypoints_z", None)
    if z is None:
        return False
    z = np.asarray(z, np.float64)
    return z.shape == (21,) and bool(np.isfinite(z).all()) and float(np.ptp(z)) > 1e-6


def depth_refs(Ks: np.ndarray, dets: list, depth_scale: float = 1.0) -> np.ndarray | None:
    """(B,21,3) each detection's image landmarks as rays scaled to the depth MediaPipe gives
    them relative to the wrist, the wrist at depth 1: ``(1 + s (z_j - z_wrist) / f) K^-1 (u_j, v_j, 1)``
    with s = ``depth_scale`` (:attr:`KeypointStage.depth_scale`).
    Its root-relative depth ratios are what :func:`handfit.fitting.losses.relative_depth_loss`
    compares. Ks: (B,3,3). A detection without usable depths (:func:`usable_depth`) gets NaN
    rows, which the keypoint stage leaves out; None when no detection has them."""
    ok = [usable_depth(d) for d in dets]
    if not any(ok):
        return None
    out = np.full((len(dets), 21, 3), np.nan)
    for i, (K, d) in enumerate(zip(Ks, dets)):
        if ok[i]:
            z = np.asarray(d.keypoints_z, np.float64)
            depth = 1.0 + depth_scale * (z - z[0]) / K[0, 0]                      # (21,) root at 1
            uv1 = np.concatenate([np.asarray(d.keypoints, np.float64), np.ones((21, 1))], -1)
            out[i] = (uv1 @ np.linalg.inv(K).T) * depth[:, None]
    return out


def to_batch(items: list, device, dtype=torch.float32, opts: FitOptions | None = None) -> HandBatch:
    """items: B :class:`HandItem` (or (K, Detection) pairs) -> :class:`HandBatch`, its 2D
    weights and depth references made as ``opts`` says (``spread_sigma``,
    ``keypoint.depth_scale``; None: the defaults)."""
    opts = opts or FitOptions()
    pairs = [(it.K, it.detection) if isinstance(it, HandItem) else it for it in items]
    box = np.stack([d.box_xyxy for _, d in pairs])
    w = kp_weights([d for _, d in pairs], opts.spread_sigma)
    Ks = np.stack([k for k, _ in pairs])
    ref = depth_refs(Ks, [d for _, d in pairs], opts.keypoint.depth_scale)
    frames = [getattr(it, "frame", None) for it in items]
    return HandBatch(
        K=torch.tensor(Ks, device=device, dtype=dtype),
        kp2d=torch.tensor(np.stack([d.keypoints for _, d in pairs]), device=device, dtype=dtype),
        world=torch.tensor(np.stack([d.world for _, d in pairs]), device=device, dtype=dtype),
        scale=torch.tensor(np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]), device=device, dtype=dtype),
        kp_weight=None if w is None else torch.tensor(w, device=device, dtype=dtype),
        depth_ref=None if ref is None else torch.tensor(ref, device=device, dtype=dtype),
        frames=None if None in frames else torch.tensor(frames, device=device, dtype=torch.long))
