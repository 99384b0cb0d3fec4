"""The same fit twice gives the same hand, bit for bit, with two threads.

Two synthetic hands (a left and a right one, so each side is a batch of one,
where torch's accumulating gathers took the unordered atomic path) are fitted
twice in one process with 2 torch threads, the dense stage included."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _scene_and_detection(side: str, seed: int):
    from handfit.detect import Detection
    from handfit.models import load_model
    from handfit.train.synth import make_scene

    sc = make_scene(load_model("anny", side=side), seed=seed, size=(192, 256))
    kp, kp3 = sc.keypoints_2d.astype(np.float64), sc.keypoints.astype(np.float64)
    box = np.concatenate([kp.min(0) - 12, kp.max(0) + 12])
    det = Detection(side=side, score=1.0, box_xyxy=box, keypoints=kp, keypoints_z=np.zeros(21),
                    world=kp3 - kp3.mean(0), image_size=(256, 192))
    return sc, det


@pytest.mark.slow
def test_two_fits_are_bit_identical_with_two_threads(res):
    import handfit
    from handfit.options import FitOptions

    scenes = [_scene_and_detection("right", 11), _scene_and_detection("left", 12)]
    opts = FitOptions.from_values({"views": 0, "side_check_below": 0, "keypoint.iters": 60, "dense.iters": 25,
                                   "dense.texture_iters": 5, "device": "cpu"})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(2):
            out = handfit.fit_batch([sc.image for sc, _ in scenes], detections=[[d] for _, d in scenes],
                                    intrinsics=[sc.K for sc, _ in scenes], options=opts, resources=res)
            runs.append([(r.hands[0].vertices, r.hands[0].keypoints_3d, r.hands[0].texture) for r in out])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
