"""geometry.py: rotation round trips (at 0, tiny angles, near and at pi, 6D),
Kabsch, the projection onto SO(3), and gradients of Rodrigues."""

from __future__ import annotations

import math

import pytest
import torch

from handfit.geometry import (axis_angle_to_matrix, kabsch, matrix_to_axis_angle, matrix_to_rotation_6d,
                              project_so3, rotation_6d_to_matrix)

D = torch.float64
EYE = torch.eye(3, dtype=D)


def assert_proper(R, atol=1e-12):
    torch.testing.assert_close(R @ R.transpose(-1, -2), EYE.expand_as(R), atol=atol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=D), atol=atol, rtol=0)


def random_rotations(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=D), dim=-1)
    angle = torch.rand(n, 1, generator=g, dtype=D) * math.pi
    return axis_angle_to_matrix(axis * angle)


def unit(*v):
    return torch.nn.functional.normalize(torch.tensor(v, dtype=D), dim=0)


AXES = [unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1), unit(1, 1, 0), unit(1, -2, 3), unit(-0.3, 0.1, -1)]


def test_zero_is_the_identity_both_ways():
    torch.testing.assert_close(axis_angle_to_matrix(torch.zeros(2, 3, dtype=D)), EYE.expand(2, 3, 3), atol=0, rtol=0)
    assert (matrix_to_axis_angle(EYE.expand(2, 3, 3)) == 0).all()


def test_known_rotation():
    # 90 degrees about z takes x to y (right-handed, R acts on column vectors).
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=D))
    torch.testing.assert_close(R @ torch.tensor([1.0, 0.0, 0.0], dtype=D), torch.tensor([0.0, 1.0, 0.0], dtype=D))


@pytest.mark.parametrize("angle", [1e-12, 1e-9, 1e-6, 1e-4, 1e-2])
def test_tiny_angles_round_trip(angle):
    aa = torch.stack(AXES) * angle
    R = axis_angle_to_matrix(aa)
    assert_proper(R)
    # First order: R = I + [aa]x, exact to angle^2 / 2.
    x, y, z = aa.unbind(-1)
    K = torch.stack([torch.zeros_like(x), -z, y, z, torch.zeros_like(x), -x, -y, x, torch.zeros_like(x)],
                    -1).view(-1, 3, 3)
    torch.testing.assert_close(R, EYE + K, atol=angle ** 2, rtol=0)
    torch.testing.assert_close(matrix_to_axis_angle(R), aa, atol=1e-15 + 1e-9 * angle, rtol=1e-7)


def test_near_pi_round_trips():
    aa = torch.stack(AXES) * (math.pi - 1e-6)
    back = matrix_to_axis_angle(axis_angle_to_matrix(aa))
    torch.testing.assert_close(back, aa, atol=1e-9, rtol=0)


@pytest.mark.parametrize("axis", AXES, ids=[f"axis{i}" for i in range(len(AXES))])
def test_exactly_pi_round_trips_up_to_the_axis_sign(axis):
    # At pi, +axis and -axis give the same rotation: compare matrices.
    R = axis_angle_to_matrix(axis * math.pi)
    assert_proper(R)
    torch.testing.assert_close(R, 2 * torch.outer(axis, axis) - EYE, atol=1e-12, rtol=0)  # R = 2nn^T - I
    back = matrix_to_axis_angle(R)
    torch.testing.assert_close(back.norm(), torch.tensor(math.pi, dtype=D), atol=1e-9, rtol=0)
    torch.testing.assert_close(axis_angle_to_matrix(back), R, atol=1e-12, rtol=0)


def test_random_round_trips():
    g = torch.Generator().manual_seed(3)
    aa = torch.nn.functional.normalize(torch.randn(64, 3, generator=g, dtype=D), dim=-1) \
        * torch.rand(64, 1, generator=g, dtype=D) * math.pi
    R = axis_angle_to_matrix(aa)
    assert_proper(R)
    torch.testing.assert_close(matrix_to_axis_angle(R), aa, atol=1e-10, rtol=0)
    # Angles beyond pi come back as the equivalent angle in [0, pi].
    big = aa / aa.norm(dim=-1, keepdim=True) * 4.0
    back = matrix_to_axis_angle(axis_angle_to_matrix(big))
    torch.testing.assert_close(back, -big / 4.0 * (2 * math.pi - 4.0), atol=1e-10, rtol=0)
    # Batch shapes pass through.
    assert axis_angle_to_matrix(aa.view(4, 16, 3)).shape == (4, 16, 3, 3)
    assert matrix_to_axis_angle(R.view(4, 16, 3, 3)).shape == (4, 16, 3)


def test_6d_round_trip():
    R = random_rotations(32)
    d6 = matrix_to_rotation_6d(R)
    assert d6.shape == (32, 6)
    torch.testing.assert_close(rotation_6d_to_matrix(d6), R, atol=1e-12, rtol=0)


def test_non_orthonormal_6d_gives_a_proper_rotation():
    g = torch.Generator().manual_seed(4)
    d6 = torch.randn(32, 6, generator=g, dtype=D) * 3
    R = rotation_6d_to_matrix(d6)
    assert_proper(R)
    # Gram-Schmidt: the first row is the first vector's direction, the second
    # lies in the plane of the two vectors.
    torch.testing.assert_close(R[:, 0], torch.nn.functional.normalize(d6[:, :3], dim=-1))
    normal = torch.cross(d6[:, :3], d6[:, 3:], dim=-1)
    torch.testing.assert_close((R[:, 1] * normal).sum(-1), torch.zeros(32, dtype=D), atol=1e-12, rtol=0)


def points(n=12, batch=4, seed=5):
    return torch.randn(batch, n, 3, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_kabsch_recovers_a_rotation():
    src = points()
    R = random_rotations(4, seed=6)
    dst = src @ R.transpose(-1, -2)
    for center in (True, False):
        torch.testing.assert_close(kabsch(src, dst, center=center), R, atol=1e-10, rtol=0)
    # Centred, a translation does not matter; uncentred it does.
    shifted = dst + torch.tensor([0.5, -2.0, 3.0], dtype=D)
    torch.testing.assert_close(kabsch(src, shifted), R, atol=1e-10, rtol=0)
    assert (kabsch(src, shifted, center=False) - R).abs().max() > 1e-2


def assert_locally_best(Rk, src, dst):
    """No small rotation of Rk fits the centred point sets better."""
    c = src - src.mean(-2, keepdim=True)
    d = dst - dst.mean(-2, keepdim=True)

    def cost(Q):
        return (c @ Q.transpose(-1, -2) - d).square().sum((-1, -2))

    best = cost(Rk)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        nudge = axis_angle_to_matrix(1e-3 * torch.randn(Rk.shape[0], 3, generator=g, dtype=D))
        assert (cost(nudge @ Rk) > best).all()


def test_kabsch_under_noise_is_the_best_proper_rotation():
    src = points(seed=7)
    R = random_rotations(4, seed=8)
    dst = src @ R.transpose(-1, -2) + 0.05 * points(seed=9)
    Rk = kabsch(src, dst)
    assert_proper(Rk)
    assert_locally_best(Rk, src, dst)


def test_kabsch_of_a_reflection_stays_proper():
    # dst is a mirror image of src: the unconstrained optimum has det -1; the
    # answer must be the best *proper* rotation.
    src = points(seed=10)
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=D))
    R = random_rotations(4, seed=11)
    dst = src @ (R @ mirror).transpose(-1, -2)
    Rk = kabsch(src, dst)
    assert_proper(Rk)
    assert_locally_best(Rk, src, dst)
    assert_proper(kabsch(src, dst, center=False))
    # For a flat src in the z = 0 plane the mirror is invisible: R itself fits exactly.
    flat = src * torch.tensor([1.0, 1.0, 0.0], dtype=D)
    torch.testing.assert_close(kabsch(flat, flat @ (R @ mirror).transpose(-1, -2), center=False), R,
                               atol=1e-10, rtol=0)


def test_project_so3():
    R = random_rotations(8, seed=12)
    torch.testing.assert_close(project_so3(R), R, atol=1e-12, rtol=0)
    # Polar decomposition: R times a symmetric positive-definite matrix projects to R.
    A = torch.randn(8, 3, 3, generator=torch.Generator().manual_seed(13), dtype=D)
    S = A @ A.transpose(-1, -2) + 0.5 * EYE
    torch.testing.assert_close(project_so3(R @ S), R, atol=1e-10, rtol=0)
    # A perturbed rotation: the result is proper and no rotation nearby is nearer.
    M = R + 0.2 * A
    P = project_so3(M)
    assert_proper(P)
    dist = (P - M).square().sum((-1, -2))
    assert (dist <= (R - M).square().sum((-1, -2))).all()
    for seed in range(5):
        nudge = axis_angle_to_matrix(1e-3 * torch.randn(8, 3, generator=torch.Generator().manual_seed(seed), dtype=D))
        assert ((nudge @ P - M).square().sum((-1, -2)) > dist).all()
    # An improper matrix (det -1) still gives a proper rotation.
    assert_proper(project_so3(-R))


@pytest.mark.parametrize("at", ["zero", "tiny", "general", "near_pi"])
def test_axis_angle_to_matrix_gradcheck(at):
    aa = {"zero": torch.zeros(2, 3, dtype=D),
          "tiny": 1e-5 * torch.stack(AXES[:2]),
          "general": torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]], dtype=D),
          "near_pi": (math.pi - 1e-3) * torch.stack(AXES[3:5])}[at].requires_grad_()
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))


def test_gradient_at_zero_is_the_cross_product_matrix():
    # dR/d(aa_k) at 0 is the generator [e_k]x.
    aa = torch.zeros(3, dtype=D, requires_grad=True)
    jac = torch.autograd.functional.jacobian(axis_angle_to_matrix, aa)  # (3,3,3)
    gens = torch.tensor([[[0, 0, 0], [0, 0, -1], [0, 1, 0]],
                         [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
                         [[0, -1, 0], [1, 0, 0], [0, 0, 0]]], dtype=D)
    torch.testing.assert_close(jac.permute(2, 0, 1), gens, atol=0, rtol=0)


def test_matrix_to_axis_angle_gradcheck():
    R = random_rotations(3, seed=14).requires_grad_()
    assert torch.autograd.gradcheck(matrix_to_axis_angle, (R,))
