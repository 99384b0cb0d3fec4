"""The one fit pipeline: tensors made in one place, the side decision, results in the items' order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handfit.fitting import pipeline as P
from handfit.options import FitOptions


def _truth_item(side: str, seed: int, label: str | None = None, score: float = 1.0):
    from handfit.detect import Detection
    from handfit.models import load_model
    from handfit.train.synth import make_scene

    sc = make_scene(load_model("anny", side=side), seed=seed, size=(192, 256))
    kp, kp3 = sc.keypoints_2d.astype(np.float64), sc.keypoints.astype(np.float64)
    det = Detection(side=label or side, score=score, box_xyxy=np.concatenate([kp.min(0) - 8, kp.max(0) + 8]),
                    keypoints=kp, keypoints_z=np.zeros(21), world=kp3 - kp3.mean(0), image_size=(256, 192))
    return P.HandItem(sc.K, det, sc.image), sc


def test_to_batch_shapes_and_select():
    items = [_truth_item("right", 1)[0], _truth_item("right", 2)[0]]
    b = P.to_batch(items, "cpu", torch.float64)
    assert b.K.shape == (2, 3, 3) and b.kp2d.shape == (2, 21, 2) and b.world.shape == (2, 21, 3)
    assert b.scale.shape == (2,) and b.K.dtype == torch.float64
    one = b.select([1])
    assert torch.equal(one.kp2d[0], b.kp2d[1])
    box = items[0].detection.box_xyxy
    assert float(b.scale[0]) == pytest.approx(max(box[2] - box[0], box[3] - box[1]))
    # the fixtures' zero depths say nothing: no depth reference
    assert b.depth_ref is None


def _with_true_depth(item, kp3):
    """The item with MediaPipe's convention of relative depth: (z_j - z_root) in x pixels at the root's depth."""
    from dataclasses import replace

    z = (kp3[:, 2] - kp3[0, 2]) * item.K[0, 0] / kp3[0, 2]
    return replace(item, detection=replace(item.detection, keypoints_z=z))


def test_depth_refs_round_trip_to_the_true_keypoints_at_unit_root_depth():
    from handfit.fitting import losses as L
    from handfit.fitting.hands import depth_refs

    item, sc = _truth_item("right", 3)
    kp3 = sc.keypoints.astype(np.float64)
    item = _with_true_depth(item, kp3)
    ref = depth_refs(item.K[None], [item.detection])                               # (1,21,3)
    np.testing.assert_allclose(ref[0], kp3 / kp3[0, 2], atol=1e-5)   # the scene is float32
    assert float(L.relative_depth_loss(torch.tensor(kp3[None]), torch.tensor(ref))[0]) < 1e-10
    assert depth_refs(item.K[None], [type("D", (), {"keypoints_z": None})()]) is None


def test_a_hand_without_depths_gets_no_depth_term_beside_one_with_them():
    """A detector that fills keypoints_z with zeros must not pull its hand flat, nor switch the
    term off for the other hands of the batch."""
    from handfit.fitting.keypoint import keypoint_terms
    from handfit.models import load_model

    flat, sc_flat = _truth_item("right", 5)
    deep, sc_deep = _truth_item("right", 6)
    deep = _with_true_depth(deep, sc_deep.keypoints.astype(np.float64))
    b = P.to_batch([flat, deep], "cpu", torch.float64)
    assert torch.isnan(b.depth_ref[0]).all() and torch.isfinite(b.depth_ref[1]).all()
    assert torch.isfinite(b.select([1]).depth_ref).all()
    model = load_model("anny", side="right", dtype=torch.float64)
    w = FitOptions().keypoint.weights
    params = {k: torch.stack([torch.as_tensor(np.asarray(s.params[k]), dtype=torch.float64)
                              for s in (sc_flat, sc_deep)]) for k in sc_flat.params}
    params["global_orient"] = params["global_orient"] + 0.3          # both tilted away from the truth
    params = {k: v.requires_grad_() for k, v in params.items()}
    depth = keypoint_terms(model, b, w)(params)["depth"]
    assert float(depth[0]) == 0.0 and float(depth[1]) > 1e-4
    depth.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in params.values())


def test_the_depth_term_is_zero_at_the_truth_and_grows_when_the_hand_tilts():
    from handfit.fitting.keypoint import keypoint_terms
    from handfit.models import load_model

    item, sc = _truth_item("right", 4)
    item = _with_true_depth(item, sc.keypoints.astype(np.float64))
    b = P.to_batch([item], "cpu", torch.float64)
    model = load_model("anny", side="right", dtype=torch.float64)
    w = FitOptions().keypoint.weights
    w.depth = 0.01
    truth = {k: torch.tensor(np.asarray(v, np.float64))[None] for k, v in sc.params.items()}
    terms = keypoint_terms(model, b, w)
    assert float(terms(truth)["depth"][0]) < 1e-8
    moved = dict(truth, global_orient=truth["global_orient"] + torch.tensor([[0.3, 0.0, 0.0]], dtype=torch.float64))
    assert float(terms(moved)["depth"][0]) > 1e-4
    w.depth = 0.0
    assert "depth" not in keypoint_terms(model, b, w)(truth)


@pytest.mark.slow
def test_a_mislabelled_hand_gets_its_side_from_the_fit(res):
    """A left hand that MediaPipe called right, unsure: both models are fitted and left wins.
    (Given without its photo, so both fits see these landmarks, not MediaPipe's views of the render.)"""
    item, _ = _truth_item("left", 12, label="right", score=0.5)
    item = P.HandItem(item.K, item.detection, None)
    opts = FitOptions.from_values({"views": 0, "device": "cpu"})
    (d,) = [it.detection for it in P.decide_sides([item], opts, res)]
    assert d.side == "left" and d.side_source == "fit" and d.detector_side == "right"
    assert d.side_losses["left"] < d.side_losses["right"]
    sure = P.decide_sides([_truth_item("right", 6)[0]], opts, res)[0].detection
    assert sure.side_source == "detector" and sure.side_losses is None      # a sure label is not checked


def test_side_check_fits_both_sides_in_one_mirrored_batch(res):
    """The left model is the right one mirrored, so the side check fits the left
    candidates as mirrored right hands in one batch; the losses must be those of
    two separate fits, and a mirrored detection must mirror back."""
    from handfit.fitting.side import _side_losses, mirror_item

    items = [_truth_item("left", 12)[0], _truth_item("right", 8)[0]]
    pairs = [(it.K, it.detection) for it in items]
    opts = FitOptions.from_values({"views": 0, "device": "cpu", "keypoint.iters": 30})
    one = _side_losses({"left": pairs, "right": pairs}, opts, res, "cpu", 30)
    two = _side_losses({"left": pairs, "right": pairs}, opts, res, "cpu", 30, batched=False)
    for side in ("left", "right"):
        torch.testing.assert_close(one[side], two[side], rtol=1e-3, atol=1e-5)
    assert float(one["left"][0]) < float(one["right"][0]) and float(one["right"][1]) < float(one["left"][1])
    K, d = mirror_item(*mirror_item(*pairs[0]))
    assert np.allclose(K, pairs[0][0]) and np.allclose(d.keypoints, pairs[0][1].keypoints)
    assert np.allclose(d.world, pairs[0][1].world) and np.allclose(d.box_xyxy, pairs[0][1].box_xyxy)


def test_fit_hands_returns_results_in_item_order_with_keypoint_stage_only(res):
    items = [_truth_item("left", 7)[0], _truth_item("right", 8)[0], _truth_item("left", 9)[0]]
    opts = FitOptions.from_values({"views": 0, "side_check_below": 0, "keypoint.iters": 40, "dense.enabled": False,
                                   "device": "cpu"})
    out = P.fit_hands(items, opts, res)
    assert [h.side for h in out] == ["left", "right", "left"]
    for it, h in zip(items, out):
        assert np.allclose(h.keypoints_2d_detected, it.detection.keypoints)
        assert "dense" not in h.losses and h.metrics["kp2d_px"] < 15
        assert h.texture.std(axis=(0, 1)).max() == 0         # the flat skin texture
        assert h.vertices.shape == (1609, 3) and h.seconds > 0


@pytest.mark.slow
def test_a_track_frame_called_the_other_side_gets_landmarks_of_the_tracks_side(res):
    """Three frames of a left hand, the first called right (unsure): the track is left, and
    the first frame's landmarks are the candidate that its evidence step fused from the views
    that called it left (handfit/detect/evidence.py), not its own; fitting/ looks at no view."""
    from dataclasses import replace

    items = [_truth_item("left", 20 + i, score=0.6)[0] for i in range(3)]
    wrong = items[0].detection
    mirrored = replace(wrong, side="right", keypoints=wrong.keypoints[::-1].copy())  # other-chirality landmarks
    mirrored = replace(mirrored, candidates={"left": wrong, "right": mirrored}, votes={"left": 1.0, "right": 0.5})
    items[0] = P.HandItem(items[0].K, mirrored, items[0].rgb)
    opts = FitOptions.from_values({"views": 0, "keypoint.iters": 10, "side_check_iters": 10, "device": "cpu",
                                   "track.warm_iters": 5, "track.smooth": 0.0})
    fit = P.fit_track(items, opts, res)
    assert fit.side == "left"
    d = fit.items[0].detection
    assert d.side == "left" and d.detector_side == "right" and d.side_source == "fit"
    assert np.array_equal(d.keypoints, wrong.keypoints)
    assert all(np.array_equal(a.detection.keypoints, b.detection.keypoints) for a, b in zip(fit.items[1:], items[1:]))
