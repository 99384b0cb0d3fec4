"""Hand detection with MediaPipe, fully offline: :class:`Detector` -> :class:`Detection`.

Modules (no import cycles: ``detector`` imports ``passes``, ``bundle`` and
``quiet``; none of them imports ``detector``):

* :mod:`.bundle`: the offline ``hand_landmarker`` ``.task`` bundle, built from
  the models the mediapipe wheel ships (:func:`task_file`);
* :mod:`.quiet`: :func:`~handfit.detect.quiet.quiet_stderr`, silencing
  MediaPipe's native log lines;
* :mod:`.detector`: :class:`Detector` (the full pass, the cascade, boxes, and
  the per-view calls :meth:`Detector.landmarks` and
  :meth:`Detector.pose_landmarks`) and :class:`Detection`;
* :mod:`.passes`: the cascade's extra passes as plain functions of a
  landmark callable: views (tiles, upscaled crops, rotations, mirror,
  contrast, pose-guided wrists), :func:`~handfit.detect.passes.map_back`,
  :func:`~handfit.detect.passes.same_hand`, :func:`~handfit.detect.passes.merge`;
* :mod:`.multiview`: multi-view 2D evidence for one detected hand (rotated,
  scaled and mirrored views of its crop, median-fused, with a per-keypoint
  spread): :func:`~handfit.detect.multiview.refine` (imports ``passes`` only).

Coordinates
-----------
MediaPipe returns landmarks normalised by the image size, with ``x = 0`` at
the left *edge* of the image and ``x = 1`` at its right edge, so pixel centres
sit at ``(i + 0.5) / W``. :class:`Detection` gives them in OpenCV pixel
coordinates (centre of the top-left pixel at ``(0, 0)``):
``u = x * W - 0.5``, ``v = y * H - 0.5``. Landmark ``z`` (depth relative to
the wrist, smaller is closer, "roughly the scale of x") becomes
``z * W`` pixels.

Handedness
----------
The Tasks API labels the hand's anatomical side as seen in an ordinary
(non-mirrored) photo, and that is what :attr:`Detection.side` holds: a person
facing the camera has their right hand on the image's left. (The legacy
``mp.solutions.hands`` assumes mirrored selfie input and swaps the labels; it
is not used here.) Checked on the dev photos: ``hamer/test5.jpg`` and the
labelled ``panoptic/ex2_2.flv_000040`` hands.
"""

from __future__ import annotations

from .bundle import task_file
from .detector import (DEFAULT_MAX_SIDE, HAND_CAP, MODES, POSE_MAX_SIDE, STRICT_CONFIDENCE, Detection,
                       Detector)
from .passes import FAST_PASSES, PASSES

__all__ = ["Detection", "Detector", "task_file", "DEFAULT_MAX_SIDE", "HAND_CAP", "MODES", "STRICT_CONFIDENCE",
           "POSE_MAX_SIDE", "PASSES", "FAST_PASSES"]
