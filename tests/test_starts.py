"""Starts that cannot blow up, and the verdict on every hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from handfit.fitting import pipeline as P
from handfit.fitting.resources import Resources
from handfit.options import FitOptions, QualityStage, StartStage


def _truth_item(seed: int):
    from handfit.detect import Detection
    from handfit.models import load_model
    from handfit.train.synth import make_scene

    sc = make_scene(load_model("anny", side="right"), seed=seed, size=(192, 256))
    kp, kp3 = sc.keypoints_2d.astype(np.float64), sc.keypoints.astype(np.float64)
    det = Detection(side="right", score=1.0, box_xyxy=np.concatenate([kp.min(0) - 8, kp.max(0) + 8]),
                    keypoints=kp, keypoints_z=np.zeros(21), world=kp3 - kp3.mean(0), image_size=(256, 192))
    return P.HandItem(sc.K, det, None), sc


def _truth_params(sc) -> dict:
    return {k: torch.tensor(np.asarray(v, np.float32))[None] for k, v in sc.params.items()}


def test_turns_are_rotations_identity_first():
    from handfit.fitting.starts import turns

    R = turns(StartStage(), "cpu", torch.float64)
    assert R.shape == (10, 3, 3)
    assert torch.allclose(R[0], torch.eye(3, dtype=torch.float64))
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(10, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(10, dtype=torch.float64))
    assert turns(StartStage(turns=""), "cpu", torch.float64).shape == (1, 3, 3)


def test_start_error_is_zero_at_the_truth_and_infinite_behind_the_camera():
    from handfit.fitting.hands import to_batch
    from handfit.fitting.starts import start_error
    from handfit.models import load_model

    item, sc = _truth_item(3)
    model = load_model("anny", side="right")
    batch = to_batch([item], "cpu", torch.float32)
    truth = _truth_params(sc)
    assert float(start_error(model, truth, batch)[0]) < 1e-3
    behind = dict(truth, transl=truth["transl"] * torch.tensor([1.0, 1.0, -1.0]))
    assert math.isinf(float(start_error(model, behind, batch)[0]))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["turned", "behind"])
def test_a_start_far_off_is_replaced_and_the_fit_recovers(how):
    """A start turned 180° about the camera axis, or put behind the camera, given through
    keypoint_fit's ``start``: the check replaces it and the keypoint fit lands on its evidence.
    Without the check (a threshold no finite error exceeds) the turned start stays far off;
    one behind the camera is always checked."""
    item, sc = _truth_item(5)
    truth = _truth_params(sc)
    bad = {k: v.clone() for k, v in truth.items()}
    if how == "turned":
        from handfit.geometry import axis_angle_to_matrix, matrix_to_axis_angle

        turn = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi]]))
        bad["global_orient"] = matrix_to_axis_angle(turn @ axis_angle_to_matrix(bad["global_orient"]))
    else:
        bad["transl"] = bad["transl"] * torch.tensor([1.0, 1.0, -1.0])
    base = {"device": "cpu", "views": 0, "dense.enabled": False, "side_check_below": 0.0, "keypoint.iters": 60}
    with Resources() as res:
        fit = P.keypoint_fit("right", [item], FitOptions.from_values(base), res, start=bad)
        (hand,) = P.assemble(fit)
        stuck = P.keypoint_fit("right", [item], FitOptions.from_values({**base, "start.check": 1e9}), res,
                               start=bad)
        (left_alone,) = P.assemble(stuck)
    assert hand.init.startswith("given+")
    assert hand.metrics["start_rel"] < 0.2
    assert hand.metrics["kp2d_max_rel"] < 0.1 and hand.quality == "ok", hand.metrics
    if how == "turned":
        assert left_alone.init == "given"
        assert left_alone.metrics["kp2d_max_rel"] > 0.25 and left_alone.quality == "suspect"
    else:
        assert left_alone.init.startswith("given+")


def test_a_good_start_is_left_exactly_as_it_was():
    from handfit.fitting.hands import to_batch
    from handfit.fitting.starts import checked_starts
    from handfit.models import load_model
    from handfit.options import KeypointStage

    item, sc = _truth_item(2)
    model = load_model("anny", side="right")
    batch = to_batch([item], "cpu", torch.float32)
    truth = _truth_params(sc)
    params, methods, err = checked_starts(model, truth, batch, KeypointStage(), StartStage(), ["regressor"])
    assert params is truth and methods == ["regressor"] and float(err[0]) < 1e-3


def _sig(**kw):
    sig = {"kp2d_max_px": 3.0, "kp2d_max_rel": 0.02, "kp2d_worst": "index_tip", "spread_rel": 0.01,
           "limit_frac": 0.0, "side_margin": 0.6, "score": 0.9, "start_rel": 0.03,
           "world_rel": 0.05}
    sig.update(kw)
    return sig


def test_verdict_names_each_reason_and_only_then():
    from handfit.fitting.quality import verdict

    q = QualityStage(min_score=0.5, side_margin=0.1)
    assert verdict(_sig(), q) == ("ok", [])
    assert verdict(_sig(start_rel=None, spread_rel=None, side_margin=None, world_rel=None), q) == ("ok", [])
    cases = {"far from evidence": dict(kp2d_max_rel=0.4, kp2d_max_px=120.0), "start never": dict(start_rel=3.0),
             "views disagree": dict(spread_rel=0.5), "low detection score": dict(score=0.2),
             "pose against its limits": dict(limit_frac=0.8), "side uncertain": dict(side_margin=0.05),
             "2D and 3D evidence disagree": dict(world_rel=0.4)}
    for phrase, kw in cases.items():
        v, reasons = verdict(_sig(**kw), q)
        assert v == "suspect" and len(reasons) == 1 and reasons[0].startswith(phrase), (phrase, reasons)
    v, reasons = verdict(_sig(), q, side_conflict=True)
    assert v == "suspect" and reasons == ["side conflicts with its track"]


def test_signals_measure_in_box_sides_of_the_evidence():
    from handfit.fitting.quality import signals

    ev = np.zeros((21, 2))
    ev[:, 0] = np.linspace(0, 200, 21)                 # a 200 px box
    fitted = ev.copy()
    fitted[8] += [0.0, 50.0]                           # index tip 50 px off
    det = type("D", (), {"score": 0.8, "keypoint_spread": np.full(21, 10.0), "side_losses": None})()
    lo, hi = np.full(4, -1.0), np.full(4, 1.0)
    s = signals(fitted, ev, np.array([1.0, -1.0, 0.0, 0.5]), lo, hi, det, 0.1)
    assert s["kp2d_max_px"] == pytest.approx(50.0) and s["kp2d_max_rel"] == pytest.approx(0.25)
    assert s["kp2d_worst"] == "index_tip" and s["spread_rel"] == pytest.approx(0.05)
    assert s["limit_frac"] == pytest.approx(0.5) and s["side_margin"] is None and s["score"] == 0.8


def test_world_disagreement_is_zero_for_a_similar_copy_and_grows_when_fingers_swap():
    """The fit's 3D against MediaPipe's world landmarks after the best similarity: a turned,
    scaled and moved copy agrees exactly; two fingers swapped disagree."""
    from handfit.fitting.quality import world_disagreement
    from handfit.geometry import axis_angle_to_matrix

    _, sc = _truth_item(4)
    kp = sc.keypoints.astype(np.float64)
    R = axis_angle_to_matrix(torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64)).numpy()
    world = 0.7 * kp @ R.T + [0.1, -0.2, 0.3]
    assert world_disagreement(kp, world) < 1e-9
    swapped = world.copy()
    swapped[[5, 6, 7, 8, 9, 10, 11, 12]] = world[[9, 10, 11, 12, 5, 6, 7, 8]]   # index <-> middle
    assert world_disagreement(kp, swapped) > 0.05
    assert world_disagreement(kp, None) is None and world_disagreement(kp, np.full((21, 3), np.nan)) is None
