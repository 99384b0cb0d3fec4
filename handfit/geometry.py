"""Rotation helpers over batched tensors (pure functions, autograd-safe).

The one home of rotation maths: axis-angle, 6D, Kabsch and the projection
onto SO(3) are written here and nowhere else."""

from __future__ import annotations

import torch


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues. aa: (...,3) axis * angle in radians -> (...,3,3).

    Smooth at zero: uses the Taylor expansion of sin(t)/t and (1-cos t)/t^2 for
    tiny angles so gradients stay finite at the rest pose.
    """
    theta2 = (aa * aa).sum(-1, keepdim=True)  # (...,1)
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, 1.0, theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2_safe)
    # The cross-product matrix of aa as one product with a constant (3,9) map: a
    # handful of ops instead of unbinding and stacking nine entries (the model
    # calls this several times per fitting iteration).
    K = (aa @ aa.new_tensor(_SKEW)).unflatten(-1, (3, 3))  # (...,3,3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


# Row i: the entries of [e_i]_x, the cross-product matrix of the i-th unit vector.
_SKEW = ((0, 0, 0, 0, 0, -1, 0, 1, 0),
         (0, 0, 1, 0, 0, 0, -1, 0, 0),
         (0, -1, 0, 1, 0, 0, 0, 0, 0))


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`axis_angle_to_matrix`. R: (...,3,3) -> (...,3), angle in [0, pi].

    Goes through a quaternion (Shepperd's method) so it stays exact near pi.
    """
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cand = torch.stack([
        torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # (...,4,4): row i is 4*q*q_i for the i-th choice of pivot
    diag = torch.stack([1 + tr, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = diag.argmax(-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)
    q = torch.where(q[..., :1] < 0, -q, q)  # w >= 0 -> angle in [0, pi]
    w, xyz = q[..., 0], q[..., 1:]
    s = xyz.norm(dim=-1)
    angle = 2 * torch.atan2(s, w)
    scale = torch.where(s < 1e-8, 2 * torch.ones_like(s), angle / s.clamp(min=1e-12))
    return xyz * scale[..., None]


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Zhou et al. continuous 6D representation. d6: (...,6) -> (...,3,3)."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-2)


def matrix_to_rotation_6d(R: torch.Tensor) -> torch.Tensor:
    """(...,3,3) -> (...,6): the first two rows."""
    return R[..., :2, :].reshape(R.shape[:-2] + (6,))


def kabsch(src: torch.Tensor, dst: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Rotation R (B,3,3) minimising sum_i |R src_i - dst_i|^2 (proper, det +1).

    src, dst: (B,N,3) corresponding points. With ``center`` both sets are
    centred first (the best rotation about their centroids); without it they
    are taken about the origin.
    """
    if center:
        src = src - src.mean(-2, keepdim=True)
        dst = dst - dst.mean(-2, keepdim=True)
    H = src.transpose(-1, -2) @ dst                                    # (B,3,3)
    U, _, Vt = torch.linalg.svd(H)
    d = torch.sign(torch.linalg.det(Vt.transpose(-1, -2) @ U.transpose(-1, -2)))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return Vt.transpose(-1, -2) @ D @ U.transpose(-1, -2)


def project_so3(M: torch.Tensor) -> torch.Tensor:
    """The rotation nearest to each matrix (Frobenius norm). M: (...,3,3) -> (...,3,3)."""
    U, _, Vt = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(U @ Vt))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return U @ D @ Vt
