"""Loss terms: values at known points, and gradients (float64 gradcheck)."""

from __future__ import annotations

import pytest
import torch

from handfit.fitting import losses as L


def test_keypoint_trust_is_free_inside_the_ball_and_grows_outside():
    target = torch.zeros(1, 21, 2, dtype=torch.float64)
    scale = torch.tensor([100.0], dtype=torch.float64)
    inside = target + torch.tensor([2.0, 0.0], dtype=torch.float64)   # 0.02 box sides
    assert L.keypoint_trust_loss(inside, target, scale, 0.03).item() == 0.0
    a = L.keypoint_trust_loss(target + torch.tensor([5.0, 0.0], dtype=torch.float64), target, scale, 0.03)
    b = L.keypoint_trust_loss(target + torch.tensor([9.0, 0.0], dtype=torch.float64), target, scale, 0.03)
    torch.testing.assert_close(a, torch.tensor([0.02 ** 2], dtype=torch.float64))
    assert b > a > 0
    # only the keypoint outside the ball pays
    one = target.clone()
    one[0, 3] = torch.tensor([8.0, 0.0])
    torch.testing.assert_close(L.keypoint_trust_loss(one, target, scale, 0.03),
                               torch.tensor([0.05 ** 2 / 21], dtype=torch.float64))


def _hand_points(seed: int = 0) -> torch.Tensor:
    """(1,21,3) float64 keypoints in front of the camera, root at index 0, palm (0 -> 9) 0.09 long."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(1, 21, 3, generator=g, dtype=torch.float64) * 0.03 + torch.tensor([0.02, -0.01, 0.5], dtype=torch.float64)
    k[0, 9] = k[0, 0] + torch.tensor([0.0, -0.09, 0.0], dtype=torch.float64)
    return k


def test_relative_depth_ignores_2d_motion_and_camera_scaling_but_not_depth():
    ref = _hand_points()
    assert L.relative_depth_loss(ref, ref).item() == 0.0
    # Scaling the hand about the camera centre (the projective ambiguity) keeps every depth ratio.
    assert L.relative_depth_loss(ref * 1.7, ref).item() < 1e-20
    # Moving keypoints sideways (in x, y) changes the 2D projection only: free.
    side = ref.clone()
    side[0, 8, :2] += torch.tensor([0.02, -0.015], dtype=torch.float64)
    assert L.relative_depth_loss(side, ref).item() < 1e-20
    # A fingertip 0.009 (a tenth of the palm) closer to the camera: (0.1)^2 / 21.
    tip = ref.clone()
    tip[0, 8, 2] -= 0.009
    torch.testing.assert_close(L.relative_depth_loss(tip, ref), torch.tensor([0.01 / 21], dtype=torch.float64))
    # Twice as far in depth costs four times as much.
    tip2 = ref.clone()
    tip2[0, 8, 2] -= 0.018
    torch.testing.assert_close(L.relative_depth_loss(tip2, ref), 4 * L.relative_depth_loss(tip, ref))


def test_keypoint_trust_gradcheck():
    gen = torch.Generator().manual_seed(0)
    pred = (torch.randn(2, 21, 2, generator=gen, dtype=torch.float64) * 6).requires_grad_()
    target = torch.zeros(2, 21, 2, dtype=torch.float64)
    scale = torch.tensor([100.0, 80.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: L.keypoint_trust_loss(p, target, scale, 0.03), (pred,))


# --- every loss: a value worked out by hand ----------------------------------

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def keypoints(**at):
    """(1,21,D) zeros with the given keypoints set, e.g. keypoints(k0=(3, 4))."""
    dim = len(next(iter(at.values())))
    k = torch.zeros(1, 21, dim, dtype=D)
    for name, value in at.items():
        k[0, int(name[1:])] = t(value)
    return k


def _hand_values():
    zero2 = torch.zeros(1, 21, 2, dtype=D)
    # one keypoint 5 px off, box side 10 px: sq = 0.25; sigma 0.5: gmof = .25*.25/(.25+.25) = 0.125
    off = keypoints(k0=(3.0, 4.0))
    w = torch.zeros(1, 21, dtype=D)
    w[0, :2] = 2.0  # keypoint 0 (0.125) and keypoint 1 (0) weigh 2 each
    img = torch.zeros(1, 3, 3, 3, dtype=D)
    img[0, 1, 1] = t([1.0, 2.0, 0.0])  # one bright pixel: four unit-ish steps around it per channel
    photo = torch.zeros(1, 1, 2, 3, dtype=D)
    photo[0, 0, 0, 0] = 0.3  # residual^2 = sigma^2 -> gmof / sigma^2 = 0.5
    return [
        ("gmof", lambda: L.gmof(t([0.0, 1.0, 4.0]), 1.0), t([0.0, 0.5, 0.8])),
        ("gmof_sigma2", lambda: L.gmof(t([4.0, 1e12]), 2.0), t([2.0, 4e12 / (1e12 + 4)])),  # saturates at sigma^2
        ("kp2d", lambda: L.keypoint_2d_loss(off, zero2, t([10.0]), sigma=0.5), t([0.125 / 21])),
        ("kp2d_weight", lambda: L.keypoint_2d_loss(off, zero2, t([10.0]), w, sigma=0.5), t([0.125 * 2 / 4])),
        ("kp2d_zero_weight", lambda: L.keypoint_2d_loss(off, zero2, t([10.0]), torch.zeros(1, 21, dtype=D)),
         t([0.0])),
        # 3 px at 10 px per box side = 0.3; 0.1 free: (0.2)^2 on one of 21 keypoints
        ("trust", lambda: L.keypoint_trust_loss(keypoints(k4=(0.0, 3.0)), zero2, t([10.0]), 0.1), t([0.04 / 21])),
        # unit RMS scaling: sqrt(21) e_x against sqrt(21) e_y on one keypoint -> 21 * 2 / 21
        ("kp3d", lambda: L.keypoint_3d_loss(keypoints(k1=(0.0, 5.0, 0.0)), keypoints(k1=(1.0, 0.0, 0.0))),
         t([2.0])),
        # scale and translation free
        ("kp3d_similar", lambda: L.keypoint_3d_loss(3.0 * keypoints(k5=(1.0, 0.5, 0.0)) + t([1.0, 2.0, 3.0]),
                                                    keypoints(k5=(1.0, 0.5, 0.0))), t([0.0])),
        ("pose_limit", lambda: L.pose_limit_loss(t([[-2.0, 0.0, 3.0]]), t([-1.0, -1.0, -1.0]), t([1.0, 1.0, 1.0])),
         t([5.0])),
        ("pose_l2", lambda: L.pose_l2_loss(t([[1.0, 2.0, 3.0, 4.0]])), t([7.5])),
        ("shape", lambda: L.shape_loss(t([[1.0, 2.0, 3.0]])), t([14.0])),
        ("photometric", lambda: L.robust_photometric_loss(photo, torch.zeros_like(photo), torch.ones(1, 1, 2, dtype=D),
                                                          sigma=0.3), t([0.25])),
        # region sums to 0.5 < 1: divided by 1, not by 0.5
        ("photometric_small_region", lambda: L.robust_photometric_loss(
            photo, torch.zeros_like(photo), torch.full((1, 1, 2), 0.25, dtype=D), sigma=0.3), t([0.125])),
        # |dy| + |dx| over the 2x2 top-left grid: 4 unit steps x (1 + 2) / 4 pixels
        ("gradient", lambda: L.gradient_loss(img, torch.zeros_like(img), torch.ones(1, 3, 3, dtype=D)), t([3.0])),
        # the last row and column of the region do not count
        ("gradient_region", lambda: L.gradient_loss(img, torch.zeros_like(img),
                                                    t([[[0.0, 0.0, 5.0], [0.0, 1.0, 5.0], [5.0, 5.0, 5.0]]])),
         t([6.0])),
        ("silhouette", lambda: L.silhouette_loss(t([[[1.0, 0.5]]]), t([[[0.0, 0.5]]]), t([[[1.0, 1.0]]])), t([0.5])),
        ("silhouette_valid", lambda: L.silhouette_loss(t([[[1.0, 0.5]]]), t([[[0.0, 0.0]]]), t([[[1.0, 0.0]]])),
         t([1.0])),
        ("tv", lambda: L.texture_tv_loss(t([[[[0.0], [1.0]], [[2.0], [3.0]]]])), t([3.0])),
        ("prior", lambda: L.texture_prior_loss(torch.ones(1, 1, 2, 3, dtype=D), torch.zeros(1, 1, 2, 3, dtype=D),
                                               t([[[[1.0], [0.0]]]])), t([0.5])),
    ]


HAND = _hand_values()


@pytest.mark.parametrize("fn,expect", [c[1:] for c in HAND], ids=[c[0] for c in HAND])
def test_value_at_a_known_point(fn, expect):
    torch.testing.assert_close(fn(), expect, rtol=1e-12, atol=1e-12)


# --- every loss: float64 gradcheck and independence of batch items -----------
#
# Each case: the loss, a maker of its arguments for a batch of B (float64,
# random, away from kinks), and which arguments are per item (sliced along
# dim 0); the others are shared by the batch.

def _cases():
    def r(g, *shape, lo=0.0, hi=1.0):
        return torch.rand(*shape, generator=g, dtype=D) * (hi - lo) + lo

    def n(g, *shape, s=1.0):
        return torch.randn(*shape, generator=g, dtype=D) * s

    return {
        "gmof": (lambda x: L.gmof(x, 0.3), lambda g, B: (r(g, B, 5, hi=0.5),), (True,)),
        "kp2d": (lambda p, q, s: L.keypoint_2d_loss(p, q, s, sigma=0.2),
                 lambda g, B: (n(g, B, 21, 2, s=8), n(g, B, 21, 2, s=8), r(g, B, lo=40, hi=80)), (True, True, True)),
        "kp2d_weight": (lambda p, q, s, w: L.keypoint_2d_loss(p, q, s, w, sigma=0.2),
                        lambda g, B: (n(g, B, 21, 2, s=8), n(g, B, 21, 2, s=8), r(g, B, lo=40, hi=80),
                                      r(g, B, 21, lo=0.1, hi=1.0)), (True, True, True, True)),
        "trust": (lambda p, q, s: L.keypoint_trust_loss(p, q, s, 0.05),
                  lambda g, B: (n(g, B, 21, 2, s=8), n(g, B, 21, 2, s=8), r(g, B, lo=40, hi=80)), (True, True, True)),
        "depth": (L.relative_depth_loss,
                  lambda g, B: tuple(torch.cat([n(g, B, 21, 2, s=0.05), r(g, B, 21, 1, lo=0.4, hi=0.6)], -1)
                                     for _ in range(2)), (True, True)),
        "kp3d": (L.keypoint_3d_loss, lambda g, B: (n(g, B, 21, 3), n(g, B, 21, 3)), (True, True)),
        "pose_limit": (L.pose_limit_loss, lambda g, B: (n(g, B, 6, s=2), r(g, 6, lo=-1.0, hi=-0.2),
                                                        r(g, 6, lo=0.2, hi=1.0)), (True, False, False)),
        "pose_l2": (L.pose_l2_loss, lambda g, B: (n(g, B, 6),), (True,)),
        "shape": (L.shape_loss, lambda g, B: (n(g, B, 4),), (True,)),
        "photometric": (lambda a, b, m: L.robust_photometric_loss(a, b, m, sigma=0.15),
                        lambda g, B: (r(g, B, 3, 4, 3), r(g, B, 3, 4, 3), r(g, B, 3, 4, lo=0.2)), (True, True, True)),
        "gradient": (L.gradient_loss, lambda g, B: (r(g, B, 3, 4, 3), r(g, B, 3, 4, 3), r(g, B, 3, 4, lo=0.5)),
                     (True, True, True)),
        "silhouette": (L.silhouette_loss, lambda g, B: (r(g, B, 3, 4), r(g, B, 3, 4), r(g, B, 3, 4, lo=0.3)),
                       (True, True, True)),
        "tv": (L.texture_tv_loss, lambda g, B: (r(g, B, 3, 4, 3),), (True,)),
        "prior": (L.texture_prior_loss, lambda g, B: (r(g, B, 3, 4, 3), r(g, B, 3, 4, 3), r(g, B, 3, 4, 1)),
                  (True, True, True)),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck(name):
    fn, make, _ = CASES[name]
    args = tuple(a.requires_grad_() for a in make(torch.Generator().manual_seed(0), 2))
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("name", list(CASES))
def test_batch_items_are_independent(name):
    fn, make, batched = CASES[name]
    g = torch.Generator().manual_seed(1)
    args = make(g, 3)
    out = fn(*args)
    assert out.shape[0] == 3
    # The batch result is the per-item results stacked.
    single = [fn(*(a[b:b + 1] if per else a for a, per in zip(args, batched))) for b in range(3)]
    torch.testing.assert_close(out, torch.cat(single), rtol=1e-12, atol=0)
    # Changing item 0 changes its loss and nobody else's.
    other = make(g, 3)
    changed = tuple(torch.cat([o[:1], a[1:]]) if per else a for a, o, per in zip(args, other, batched))
    out2 = fn(*changed)
    assert not torch.allclose(out2[0], out[0])
    torch.testing.assert_close(out2[1:], out[1:], rtol=1e-12, atol=0)


def test_keypoint_2d_weights_of_ones_equal_no_weights():
    """All-ones per-keypoint weights (the multi-view confidence) give the unweighted loss;
    weights only re-balance the keypoints: zero weight removes one."""
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(4, 21, 2, generator=g, dtype=torch.float64) * 10 + 100
    target = pred + torch.randn(4, 21, 2, generator=g, dtype=torch.float64) * 5
    scale = torch.tensor([80.0, 120.0, 60.0, 200.0], dtype=torch.float64)
    plain = L.keypoint_2d_loss(pred, target, scale)
    torch.testing.assert_close(L.keypoint_2d_loss(pred, target, scale, torch.ones(4, 21, dtype=torch.float64)),
                               plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(L.keypoint_2d_loss(pred, target, scale, torch.full((4, 21), 0.3, dtype=torch.float64)),
                               plain, rtol=1e-12, atol=0)
    w = torch.ones(4, 21, dtype=torch.float64)
    w[:, 5] = 0
    keep = [i for i in range(21) if i != 5]
    torch.testing.assert_close(L.keypoint_2d_loss(pred, target, scale, w),
                               L.keypoint_2d_loss(pred[:, keep], target[:, keep], scale))
