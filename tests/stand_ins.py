"""Stand-ins the tests share (imported by file name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np


class StandIn:
    """What the pipeline asks of a detector besides ``detect``: a stand-in's landmark model
    sees nothing in a crop's views, so a hand's evidence is its detection as it is and a
    tracked hand is found again by ``detect``, once per frame."""

    box_margin = 0.1

    def __init__(self, *a, **kw):
        pass

    def landmarks(self, rgb, strict: bool = False) -> list:
        return []

    def evidence(self, rgb, dets, views=None) -> list:
        return list(dets)

    def close(self):
        pass


def truth_detector(truth: list, score: float = 0.99):
    """A MediaPipe stand-in whose i-th ``detect`` call finds truth[i % len] = (keypoints_2d
    (21,2), keypoints_3d (21,3)) as one right hand with handedness ``score`` (below 0.95 the
    side check runs). -> (the detector class to put in place of handfit.detect.Detector, the
    list its calls append to: clear it to start again from truth[0])"""
    from handfit.detect import Detection

    calls: list = []

    class TruthDetector(StandIn):
        def detect(self, rgb, mode=None):
            kp, kp3 = truth[len(calls) % len(truth)]
            calls.append(1)
            box = np.concatenate([kp.min(0) - 10, kp.max(0) + 10])
            H, W = rgb.shape[:2]
            return [Detection(side="right", score=score, box_xyxy=box, keypoints=kp, keypoints_z=np.zeros(21),
                              world=kp3 - kp3.mean(0), image_size=(W, H))]

    return TruthDetector, calls
