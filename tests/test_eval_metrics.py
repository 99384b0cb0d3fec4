"""handfit.eval.metrics at known values."""

from __future__ import annotations

import numpy as np
import pytest

from handfit.eval import metrics as M


def _rotation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_similarity_transform_is_removed_exactly():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(4, 21, 3)) * 40
    pred = np.stack([2.5 * g @ _rotation(rng) + rng.normal(size=3) * 100 for g in gt])
    assert np.allclose(M.pa_mpjpe(pred, gt), 0, atol=1e-9)
    assert np.allclose(M.similarity_align(pred[0], gt[0])[0], gt[0], atol=1e-9)  # unbatched input works


def test_pa_mpjpe_known_value_rectangle_onto_square():
    # gt: the square (+-1, +-1, 0); pred: the rectangle (+-2, +-1, 0). By symmetry the best
    # rotation is the identity; scale s = sum(p.g)/sum(|p|^2) = 12/20 = 0.6; every residual is
    # (0.6*2 - 1, 0.6*1 - 1) = (0.2, -0.4) up to sign, of length sqrt(0.2).
    gt = np.array([[1, 1, 0], [1, -1, 0], [-1, 1, 0], [-1, -1, 0]], float)
    pred = gt * [2, 1, 1]
    assert M.pa_mpjpe(pred, gt)[0] == pytest.approx(np.sqrt(0.2), abs=1e-12)
    assert np.allclose(M.pa_errors(pred, gt), np.sqrt(0.2))


def test_mirror_image_is_an_error_not_a_match():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(21, 3))
    mirrored = gt * [-1, 1, 1]
    assert M.pa_mpjpe(mirrored, gt)[0] > 0.1       # a reflection would have matched exactly
    assert M.pa_mpjpe(gt, gt)[0] == pytest.approx(0, abs=1e-12)


def test_pa_is_optimal_and_below_root_relative():
    rng = np.random.default_rng(2)
    gt = rng.normal(size=(16, 21, 3))
    pred = gt + rng.normal(size=gt.shape) * 0.3
    pa, rr = M.pa_mpjpe(pred, gt), M.rr_mpjpe(pred, gt)
    assert (pa <= rr + 1e-12).all()
    # any other similarity does no better (in squared error, which Umeyama minimises)
    best = (M.pa_errors(pred, gt) ** 2).sum(-1)
    for s in (0.9, 1.1):
        other = ((s * (pred - pred.mean(1, keepdims=True)) + gt.mean(1, keepdims=True) - gt) ** 2).sum((1, 2))
        assert (best <= other + 1e-9).all()


def test_root_relative_known_value():
    gt = np.zeros((1, 21, 3))
    gt[0, :, 0] = np.arange(21)
    pred = gt + [5.0, -2.0, 7.0]                    # a translation: no root-relative error
    assert M.rr_mpjpe(pred, gt)[0] == pytest.approx(0)
    pred[0, 3] += [3.0, 4.0, 0.0]                   # one joint 5 off
    assert M.rr_mpjpe(pred, gt)[0] == pytest.approx(5 / 21)
    assert M.rr_errors(pred, gt)[0, 3] == pytest.approx(5)


def test_pck_and_auc_known_values():
    errs = np.array([0, 10, 20, 30, 40.0])
    t = np.array([0, 25, 50.0])
    assert np.allclose(M.pck(errs, t), [0.2, 0.6, 1.0])
    # trapezoid: ((0.2 + 0.6) * 25 + (0.6 + 1.0) * 25) / 2 / 50
    assert M.auc(M.pck(errs, t), t) == pytest.approx(0.6)
    assert M.auc(M.pck(np.zeros(21))) == pytest.approx(1.0)
    assert M.auc(M.pck(np.full(21, 60.0))) == pytest.approx(0.0)
    assert M.auc(M.pck([[np.nan, 0.0]])) == pytest.approx(1.0)  # NaNs are ignored
    assert M.PCK_THRESHOLDS_MM[0] == 0 and M.PCK_THRESHOLDS_MM[-1] == 50 and len(M.PCK_THRESHOLDS_MM) == 101


def test_kp2d_errors_with_visibility():
    gt = np.zeros((2, 21, 2))
    pred = gt.copy()
    pred[:, 0] = [3, 4]                             # 5 px off on joint 0
    vis = np.ones((2, 21), bool)
    vis[1, 1:] = False                              # hand 1: only joint 0 visible
    assert np.allclose(M.kp2d_errors(pred, gt, vis), [5 / 21, 5.0])
    assert np.isnan(M.kp2d_errors(pred[:1], gt[:1], np.zeros((1, 21), bool))[0])


def test_shape_errors():
    with pytest.raises(ValueError):
        M.pa_mpjpe(np.zeros((21, 2)), np.zeros((21, 2)))
    with pytest.raises(ValueError):
        M.pa_mpjpe(np.zeros((21, 3)), np.zeros((20, 3)))
