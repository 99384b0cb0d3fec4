"""Loss terms: values at known points, and gradients (float64 gradcheck)."""

from __future__ import annotations

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


def test_keypoint_trust_gradcheck():
    gen = torch.Generator().manual_seed(0)
    pred = (torch.randn(2, 21, 2, generator=gen, dtype=torch.float64) * 6).requires_grad_()
    target = torch.zeros(2, 21, 2, dtype=torch.float64)
    scale = torch.tensor([100.0, 80.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: L.keypoint_trust_loss(p, target, scale, 0.03), (pred,))
