"""Tracks that follow their evidence: a sparsely sampled clip is not held as a smooth one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from handfit.fitting import pipeline as P
from handfit.options import FitOptions


def _clip(every: int = 10, n: int = 51, open_at: int = 25):
    """Every ``every``-th frame of a right hand whose curled index finger opens between two
    sampled frames (at ``open_at``), the hand turning and drifting slowly; the detections are
    its true keypoints. -> (HandItems with their source frame, true 2D keypoints)"""
    from handfit.camera import project
    from handfit.detect import Detection
    from handfit.models import load_model

    m = load_model("anny", side="right")
    K = np.array([[500.0, 0, 160], [0, 500.0, 120], [0, 0, 1]])
    items, truth = [], []
    for f in range(0, n, every):
        pose = torch.zeros(1, m.pose_dim)
        if f < open_at:
            pose[0, [12, 15, 18]] = torch.tensor([1.2, 1.6, 1.3])      # the index finger's three bends
        out = m(torch.tensor([[0.3 + 0.004 * f, -0.2, 0.1]]), pose, torch.zeros(1, m.shape_dim),
                torch.tensor([[0.02 - 0.0004 * f, 0.01, 0.45]]))
        kp3 = out.keypoints[0].double().numpy()
        kp = project(out.keypoints, torch.tensor(K[None], dtype=torch.float32))[0].double().numpy()
        det = Detection(side="right", score=1.0, box_xyxy=np.concatenate([kp.min(0) - 8, kp.max(0) + 8]),
                        keypoints=kp, keypoints_z=np.zeros(21), world=kp3 - kp3.mean(0), image_size=(320, 240))
        items.append(P.HandItem(K, det, None, frame=f))
        truth.append(kp)
    return items, truth


@pytest.mark.slow
def test_a_sparse_track_follows_a_finger_that_opens_between_two_sampled_frames(res):
    """At one frame in ten, the frame after the finger opened is refitted from its own start
    and every frame ends on its evidence. Treated as consecutive frames, without refits, the
    same track is held back by its neighbours."""
    items, truth = _clip()
    opts = FitOptions.from_values({"device": "cpu", "views": 0, "dense.enabled": False, "side_check_below": 0.0})
    fit = P.fit_track(items, opts, res)
    hands = P.assemble(fit, quality=opts.quality)
    err = [float(np.linalg.norm(h.keypoints_2d_fitted - t, axis=-1).max() / np.ptp(t, axis=0).max())
           for h, t in zip(hands, truth)]
    assert max(err) < 0.02, err
    assert fit.metrics["track_refit"][3] and fit.init[3].endswith("+refit")   # frame 30, the first one open
    assert all(h.quality == "ok" for h in hands)

    held = [dataclasses.replace(it, frame=None) for it in items]
    stiff = FitOptions.from_values({"device": "cpu", "views": 0, "dense.enabled": False, "side_check_below": 0.0,
                                    "track.refit_rel": 1e9})
    old = P.assemble(P.fit_track(held, stiff, res))
    assert max(h.metrics["kp2d_max_rel"] for h in old) > 3 * max(err)


def test_gaps_scale_accelerations_to_source_frames():
    """A steady motion sampled every N frames has the same acceleration per source frame² as
    sampled every frame; uneven gaps give the exact second derivative of a parabola."""
    from handfit.fitting.temporal import acceleration

    t = torch.arange(0, 31, dtype=torch.float64)
    x = 0.5 * 0.02 * t ** 2                                             # acceleration 0.02 per frame²
    assert torch.allclose(acceleration(x[:, None]), torch.full((29, 1), 0.02, dtype=torch.float64))
    sparse = acceleration(x[::10, None], torch.full((3,), 10.0, dtype=torch.float64))
    assert torch.allclose(sparse, torch.full((2, 1), 0.02, dtype=torch.float64))
    idx = torch.tensor([0, 3, 10, 12, 30])
    uneven = acceleration(x[idx, None], (idx[1:] - idx[:-1]).double())
    assert torch.allclose(uneven, torch.full((3, 1), 0.02, dtype=torch.float64))
    ones = torch.ones(29, dtype=torch.float64)
    assert torch.equal(acceleration(x[:, None], ones), acceleration(x[:, None]))
