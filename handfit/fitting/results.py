"""The result types of a fit: :class:`HandResult` (one hand) and :class:`FitResult`
(one photo or video frame), and the flat skin texture of a hand fitted
without the dense stage. Plain data: numpy arrays, nothing on a device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SKIN_RGB = (0.80, 0.62, 0.52)  # flat texture when no appearance is fitted (linear-ish sRGB)


def flat_texture(size: int) -> np.ndarray:
    """(size,size,3) uint8 texture of one skin colour."""
    tex = np.empty((size, size, 3), np.uint8)
    tex[:] = (np.array(SKIN_RGB) * 255 + 0.5).astype(np.uint8)
    return tex


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
    detect_pass: str = "full"       # the detection pass that found it (handfit.detect.passes)
    side_source: str = "detector"   # "detector" | "fit" (both models fitted, handfit.fitting.side)
    side_losses: dict | None = None  # {"left": loss, "right": loss} when both were fitted
    stages: dict = field(default_factory=dict)  # earlier stages' results, e.g. stages["keypoint"] =
                                                # {"keypoints_3d": (21,3), "keypoints_2d": (21,2)} before the dense stage
    quality: str = "ok"             # "ok" | "suspect" (handfit.fitting.quality): which hands to look at
    quality_reasons: list = field(default_factory=list)  # why suspect, one short phrase each


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
                "quality": h.quality, "quality_reasons": h.quality_reasons,
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
        from ..io.save import save_result

        return save_result(self, outdir, stem)
