"""The 21 hand keypoints: names, drawing skeleton and kinematic tree (torch-free).

The one definition every part of handfit uses: detection (MediaPipe's
landmarks), the hand models' keypoints, drawings, masks and training.

* :data:`KEYPOINT_NAMES`: MediaPipe's 21 hand landmarks in MediaPipe order
  (``mediapipe.solutions.hands.HandLandmark``, with ``index_finger_mcp``
  shortened to ``index_mcp`` and so on).
* :data:`SKELETON`: MediaPipe's 21 drawing connections
  (``mediapipe.solutions.hands_connections.HAND_CONNECTIONS``: the 15 finger
  bones, the wrist to the thumb, index and pinky bases, and the knuckle line
  5-9-13-17) as ``(a, b)`` pairs ordered parents first: ``a`` is the wrist or
  a point an earlier pair reached, and ``a < b``. It is a graph, not a tree
  (the palm outline 0-5-9-13-17-0 is a loop): use it to draw.
* :data:`PARENTS` / :data:`TREE_BONES`: the kinematic tree (each finger
  hangs off the wrist), for anything that chains bones from the wrist out
  (re-chaining bone lengths, bone-length checks): every keypoint but the wrist
  has exactly one parent, and parents come before their children.
"""

from __future__ import annotations

__all__ = ["KEYPOINT_NAMES", "SKELETON", "PARENTS", "TREE_BONES"]

KEYPOINT_NAMES = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)

#: MediaPipe's ``HAND_CONNECTIONS``, parents first (for drawing).
SKELETON = (
    (0, 1), (1, 2), (2, 3), (3, 4),
    (0, 5), (5, 6), (6, 7), (7, 8),
    (5, 9), (9, 10), (10, 11), (11, 12),
    (9, 13), (13, 14), (14, 15), (15, 16),
    (0, 17), (13, 17), (17, 18), (18, 19), (19, 20),
)

#: Parent of each keypoint in the kinematic tree (-1: the wrist, the root).
PARENTS = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)

#: The tree's 20 ``(parent, child)`` bones, in keypoint order (parents first).
TREE_BONES = tuple((p, c) for c, p in enumerate(PARENTS) if p >= 0)
