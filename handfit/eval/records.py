"""The one record type every dataset reader produces, and keypoint orders.

A :class:`Record` is one image with its intrinsics and labelled hands; every
3D point is in the OpenCV camera frame (x right, y down, z forward) in
**metres**, and every hand's keypoints are in **MediaPipe order** (wrist,
thumb1..4, index1..4, middle1..4, ring1..4, pinky1..4, base to tip), the
order of handfit's own keypoints. Readers convert on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["HandLabel", "Record", "MEDIAPIPE_NAMES", "reorder", "project_points",
           "FROM_MANO_TIPS", "FROM_INTERHAND", "FROM_RHD"]

#: Names of the 21 keypoints in MediaPipe order (the dev3d ``keypoint_order``).
MEDIAPIPE_NAMES = ["wrist"] + [f"{f}{i}" for f in ("thumb", "index", "middle", "ring", "pinky") for i in range(1, 5)]

# Index maps: ``mediapipe_order = source[MAP]``.
#: MANO's 16 joints + 5 tips (HO3D's ``handJoints3D``): wrist, index1-3, middle1-3,
#: pinky1-3, ring1-3, thumb1-3, then the tips of thumb, index, middle, ring, pinky.
FROM_MANO_TIPS = np.array([0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20])
#: InterHand2.6M, per hand: thumb4(tip)..thumb1, index4..1, middle4..1, ring4..1, pinky4..1, wrist.
FROM_INTERHAND = np.array([20, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 19, 18, 17, 16])
#: RHD, per hand: wrist, then each finger tip to base (thumb, index, middle, ring, pinky).
FROM_RHD = np.array([0, 4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 16, 15, 14, 13, 20, 19, 18, 17])


@dataclass
class HandLabel:
    """One labelled hand.

    Attributes:
        side: ``"left"``, ``"right"`` or None when the label does not say.
        keypoints_3d: ``(21,3)`` metres, OpenCV camera frame, MediaPipe order; None for 2D-only labels.
        keypoints_2d: ``(21,2)`` pixels of the stored image (OpenCV convention); None when unknown
            (then :meth:`Record.keypoints_2d` projects the 3D points with K).
        visible: ``(21,)`` bool, which 2D keypoints count for the 2D error; None: all.
    """

    side: str | None
    keypoints_3d: np.ndarray | None = None
    keypoints_2d: np.ndarray | None = None
    visible: np.ndarray | None = None

    def __post_init__(self):
        if self.side is not None:
            self.side = str(self.side).lower()
            if self.side not in ("left", "right"):
                raise ValueError(f"hand side must be left, right or None, not {self.side!r}")
        for name, d in (("keypoints_3d", 3), ("keypoints_2d", 2)):
            a = getattr(self, name)
            if a is not None:
                a = np.asarray(a, dtype=np.float64)
                if a.shape != (21, d) or not np.isfinite(a).all():
                    raise ValueError(f"{name} must be a finite (21,{d}) array, got shape {a.shape}")
                setattr(self, name, a)
        if self.visible is not None:
            self.visible = np.asarray(self.visible, dtype=bool).reshape(21)


@dataclass
class Record:
    """One image with its camera and labelled hands.

    Attributes:
        image: path of the image file.
        K: ``(3,3)`` intrinsics of the stored image, or None (the fit then uses its default camera).
        hands: the labelled hands.
        name: a short id for reports (e.g. ``ge2019_realworld/00011.jpg``).
    """

    image: Path
    K: np.ndarray | None
    hands: list = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        self.image = Path(self.image)
        if self.K is not None:
            K = np.asarray(self.K, dtype=np.float64)
            if K.shape != (3, 3) or not np.isfinite(K).all() or not np.allclose(K[2], [0, 0, 1]) \
                    or not (K[0, 0] > 0 and K[1, 1] > 0):
                raise ValueError(f"K must be a finite 3x3 intrinsic matrix with last row [0,0,1], got {K.tolist()}")
            self.K = K
        if not self.name:
            self.name = self.image.name

    def keypoints_2d(self, hand: HandLabel) -> np.ndarray | None:
        """The hand's 2D keypoints ``(21,2)``: the label's, else the 3D ones projected with K."""
        if hand.keypoints_2d is not None:
            return hand.keypoints_2d
        if hand.keypoints_3d is not None and self.K is not None:
            return project_points(hand.keypoints_3d, self.K)
        return None


def reorder(points, index_map) -> np.ndarray:
    """``points[..., index_map, :]``: a dataset's keypoints in MediaPipe order."""
    return np.asarray(points)[..., np.asarray(index_map), :]


def project_points(points, K) -> np.ndarray:
    """Pinhole projection ``(...,3)`` camera frame -> ``(...,2)`` pixels (numpy, float64)."""
    p = np.asarray(points, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    uvw = p @ K.T
    return uvw[..., :2] / uvw[..., 2:3]
