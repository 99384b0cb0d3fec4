"""Detected hands as the pipeline's input: :class:`HandItem` (one hand and its photo)
and :class:`HandBatch` (B hands as tensors, made in one place: :func:`to_batch`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["HandItem", "HandBatch", "to_batch"]


@dataclass
class HandItem:
    """One detected hand to fit."""

    K: np.ndarray                   # (3,3) intrinsics of its photo
    detection: object               # handfit.detect.Detection: side, score, box_xyxy, keypoints, world
    rgb: np.ndarray | None = None   # (H,W,3) uint8 photo; the side views and the dense stage need it


@dataclass
class HandBatch:
    """The tensors of B detected hands: the one place detections become tensors."""

    K: torch.Tensor        # (B,3,3)
    kp2d: torch.Tensor     # (B,21,2) detected pixels
    world: torch.Tensor    # (B,21,3) MediaPipe world landmarks, metres
    scale: torch.Tensor    # (B,) side of the detection box, pixels

    def select(self, idx) -> "HandBatch":
        i = torch.as_tensor(list(idx), dtype=torch.long, device=self.K.device)
        return HandBatch(self.K[i], self.kp2d[i], self.world[i], self.scale[i])


def to_batch(items: list, device, dtype=torch.float32) -> HandBatch:
    """items: B :class:`HandItem` (or (K, Detection) pairs) -> :class:`HandBatch`."""
    pairs = [(it.K, it.detection) if isinstance(it, HandItem) else it for it in items]
    box = np.stack([d.box_xyxy for _, d in pairs])
    return HandBatch(
        K=torch.tensor(np.stack([k for k, _ in pairs]), device=device, dtype=dtype),
        kp2d=torch.tensor(np.stack([d.keypoints for _, d in pairs]), device=device, dtype=dtype),
        world=torch.tensor(np.stack([d.world for _, d in pairs]), device=device, dtype=dtype),
        scale=torch.tensor(np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]), device=device, dtype=dtype))
