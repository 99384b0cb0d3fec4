"""The track's joint-acceleration term and the settling of a track's frames after their dense stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handfit.eval.metrics import accel_errors
from handfit.fitting import temporal
from handfit.fitting.hands import HandBatch
from handfit.options import KeypointStage, TrackStage


def test_joint_accel_term_charges_acceleration_of_the_articulation_only():
    T = 7
    t = torch.arange(T, dtype=torch.float64)[:, None, None]
    base = torch.randn(1, 21, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.05
    steady = base + 0.01 * t * torch.randn(1, 21, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    steady[..., 2] += 0.4
    zero = torch.zeros(T, dtype=torch.float64)
    assert torch.allclose(temporal.joint_accel_terms(steady, 1.0, TrackStage()), zero, atol=1e-12)
    # the whole hand accelerating (travel, not articulation) costs nothing either
    assert torch.allclose(temporal.joint_accel_terms(steady + 0.02 * t ** 2, 1.0, TrackStage()), zero, atol=1e-12)
    shaky = steady.clone()
    shaky[3, 8, 2] += 0.01
    s = temporal.joint_accel_terms(shaky, 1.0, TrackStage())
    assert s[0] == 0 and s[-1] == 0 and s[1] == 0 and s[2] > 0 and s[3] > 0 and s[4] > 0 and s[5] == 0
    assert torch.all(temporal.joint_accel_terms(shaky, 0.0, TrackStage()) == 0)


def test_joint_accel_term_is_robust_to_large_accelerations():
    """Charbonnier: a fast real motion costs about linearly, not quadratically, so it survives."""
    kp = torch.zeros(3, 21, 3, dtype=torch.float64)
    kp[..., 2] = 0.4

    def cost(a):
        k = kp.clone()
        k[1, 5, 2] += a
        return float(temporal.joint_accel_terms(k, 1.0, track)[1])

    track = TrackStage()
    big = 20 * track.sigma_depth
    assert cost(2 * big) / cost(big) < 2.2                        # linear: 2×, a square would give 4×
    small = 0.01 * track.sigma_depth
    assert cost(2 * small) / cost(small) == pytest.approx(4.0, rel=1e-3)  # quadratic near 0


def _track(model, T: int = 12, seed: int = 0):
    """A hand that really accelerates: fingers closing and opening, wrist turning, at half a metre."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64)[:, None]
    P = model.pose_lower.shape[0]
    mid = (model.pose_lower + model.pose_upper).double() / 2
    amp = (model.pose_upper - model.pose_lower).double() / 4
    phase = torch.rand(P, generator=g, dtype=torch.float64) * 6.28
    pose = mid + amp * torch.sin(0.7 * t + phase)
    orient = torch.cat([0.3 * torch.sin(0.5 * t), 0.2 * t, torch.zeros_like(t)], 1)
    transl = torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64).repeat(T, 1)
    shape = torch.zeros(T, model.shape_dim, dtype=torch.float64)
    return {"global_orient": orient, "pose": pose, "shape": shape, "transl": transl}


def _accel_mm(model, params, truth) -> float:
    with torch.no_grad():
        p = model(**params).keypoints.numpy() * 1000
        g = model(**truth).keypoints.numpy() * 1000
    return float(np.nanmean(accel_errors(p, g)))


@pytest.mark.slow
def test_settle_track_lowers_jitter_and_keeps_fast_motion():
    from handfit.models import load_model

    model = load_model("anny", side="right", dtype=torch.float64)
    truth = _track(model)
    T = truth["pose"].shape[0]
    K = torch.tensor([[500.0, 0, 128], [0, 500.0, 128], [0, 0, 1]], dtype=torch.float64).repeat(T, 1, 1)
    scale = torch.full((T,), 150.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    shaky = {k: v.clone() for k, v in truth.items()}
    # each frame's own error: the hand tilted towards or away from the camera, fingers bent a little
    shaky["global_orient"][:, :2] += 0.08 * torch.randn(T, 2, generator=g, dtype=torch.float64)
    shaky["pose"] += 0.05 * torch.randn(shaky["pose"].shape, generator=g, dtype=torch.float64)
    before = _accel_mm(model, shaky, truth)
    settled = {k: v.clone() for k, v in shaky.items()}
    batch = HandBatch(K, torch.zeros(T, 21, 2, dtype=torch.float64), None, scale)
    report = temporal.settle_track(model, settled, batch, KeypointStage(), TrackStage(settle_iters=150))
    assert report["iters"] == 150
    after = _accel_mm(model, settled, truth)
    assert after < 0.9 * before
    assert torch.equal(settled["shape"], shaky["shape"])
    # a clean fast track stays fast: its joints' accelerations are hardly changed
    clean = {k: v.clone() for k, v in truth.items()}
    temporal.settle_track(model, clean, batch, KeypointStage(), TrackStage(settle_iters=150))
    with torch.no_grad():
        kp = model(**truth).keypoints.numpy() * 1000
    rr = kp - kp[:, :1]
    moving = float(np.linalg.norm(rr[2:] - 2 * rr[1:-1] + rr[:-2], axis=-1).mean())
    assert _accel_mm(model, clean, truth) < 0.25 * moving
    print(before, after, _accel_mm(model, clean, truth), moving)


@pytest.mark.slow
def test_pipeline_settle_refines_the_chunks_together_and_records_it():
    """pipeline.settle: the chunks' params come back as one settled track, split in order;
    each frame records the settle terms; track.smooth 0 leaves the track as it was."""
    from handfit.fitting.pipeline import HandBatch, SideFit, settle
    from handfit.models import load_model
    from handfit.options import FitOptions

    model = load_model("anny", side="right", dtype=torch.float64)
    truth = _track(model, T=9)
    g = torch.Generator().manual_seed(2)
    shaky = {k: v.clone() for k, v in truth.items()}
    shaky["global_orient"][:, :2] += 0.08 * torch.randn(9, 2, generator=g, dtype=torch.float64)
    K = torch.tensor([[500.0, 0, 128], [0, 500.0, 128], [0, 0, 1]], dtype=torch.float64).repeat(9, 1, 1)
    batch = HandBatch(K, torch.zeros(9, 21, 2, dtype=torch.float64), torch.zeros(9, 21, 3, dtype=torch.float64),
                      torch.full((9,), 150.0, dtype=torch.float64))
    fit = SideFit("right", model, [None] * 9, batch, shaky, ["warm"] * 9, track=True)
    fit.seconds = np.zeros(9)

    def parts():
        return [fit.select(range(0, 4)), fit.select(range(4, 9))]

    opts = FitOptions.from_values({"device": "cpu"})
    kept = parts()
    settle(fit, kept, FitOptions.from_values({"device": "cpu", "track.smooth": 0.0}))
    assert all(torch.equal(p.params["pose"], shaky["pose"][i:i + len(p.items)]) for p, i in zip(kept, (0, 4)))
    assert all("settle" not in p.losses for p in kept)
    settled = parts()
    settle(fit, settled, opts)
    whole = {k: torch.cat([p.params[k] for p in settled]) for k in shaky}
    assert _accel_mm(model, whole, truth) < _accel_mm(model, shaky, truth)
    for p in settled:
        assert p.metrics["settle_iters"] == opts.track.settle_iters and "joint_accel" in p.losses["settle"]
        assert p.losses["settle"]["hold_2d"].shape == (len(p.items),)
    # one call over the whole track: the chunks do not change the result
    alone = {k: v.clone() for k, v in shaky.items()}
    temporal.settle_track(model, alone, batch, opts.keypoint, opts.track)
    assert torch.allclose(alone["pose"], whole["pose"])
