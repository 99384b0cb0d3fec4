"""Loss terms. Each returns one value per hand, shape (B,), so convergence and
reporting are per hand; the optimiser sums them.
"""

from __future__ import annotations

import torch


def gmof(sq: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure on squared residuals: quadratic near 0, saturating at sigma^2."""
    s2 = sigma * sigma
    return s2 * sq / (sq + s2)


def keypoint_2d_loss(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor,
                     weight: torch.Tensor | None = None, sigma: float = 0.1) -> torch.Tensor:
    """Robust 2D reprojection error.

    pred, target: (B,21,2) pixels; scale: (B,) box side in pixels, so the term
    does not depend on image resolution; weight: (B,21) or None.
    -> (B,) mean over keypoints of gmof(|pred-target|^2 / scale^2).
    """
    sq = ((pred - target) ** 2).sum(-1) / scale[:, None] ** 2  # (B,21)
    r = gmof(sq, sigma)
    if weight is not None:
        return (r * weight).sum(-1) / weight.sum(-1).clamp(min=1e-6)
    return r.mean(-1)


def keypoint_trust_loss(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor,
                        radius: float) -> torch.Tensor:
    """Squared hinge on how far each 2D keypoint leaves a ball around its target.

    pred, target: (B,K,2) pixels; scale: (B,) hand box side in pixels;
    radius: ball radius in box sides (free inside) -> (B,)
    """
    r = (pred - target).norm(dim=-1) / scale[:, None]                 # (B,K)
    return torch.relu(r - radius).square().mean(-1)


def _normalise(k: torch.Tensor) -> torch.Tensor:
    """Root-relative keypoints divided by their RMS distance to the root. k: (B,21,3)."""
    rel = k - k[:, :1]
    return rel / rel.square().sum(-1).mean(-1).sqrt().clamp(min=1e-6)[:, None, None]


def keypoint_3d_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-free 3D shape term against MediaPipe world landmarks.

    Both (B,21,3) in camera-aligned axes; each is made root-relative and
    scaled to unit RMS, so only the articulation and orientation count.
    -> (B,)
    """
    return (_normalise(pred) - _normalise(target)).square().sum(-1).mean(-1)


def relative_depth_loss(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Change of each keypoint's depth relative to the root, from ``ref``.

    pred, ref: (B,K,3) camera frame, keypoint 0 the root. Each keypoint's
    depth is taken as the ratio z_k / z_root, which scaling the hand about
    the camera centre (the projective ambiguity) leaves unchanged; the change
    is expressed in ``ref``'s palm lengths (root to keypoint 9) so the term
    does not depend on the hand's size or distance. The 2D projection is free.
    -> (B,) mean over keypoints of the squared change
    """
    ratio = pred[..., 2] / pred[:, :1, 2]
    ratio_ref = ref[..., 2] / ref[:, :1, 2]
    palm = (ref[:, 9] - ref[:, 0]).norm(dim=-1) / ref[:, 0, 2]  # (B,) palm length / root depth
    return ((ratio - ratio_ref) / palm.clamp(min=1e-6)[:, None]).square().mean(-1)


def pose_limit_loss(pose: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Squared hinge outside the anatomical box. pose: (B,P); lower, upper: (P,). -> (B,)"""
    return (torch.relu(lower - pose).square() + torch.relu(pose - upper).square()).sum(-1)


def pose_l2_loss(pose: torch.Tensor) -> torch.Tensor:
    """Weak pull towards the rest pose. (B,P) -> (B,)"""
    return pose.square().mean(-1)


def shape_loss(shape: torch.Tensor) -> torch.Tensor:
    """Shape coefficients are ~N(0,1) by construction. (B,S) -> (B,)"""
    return shape.square().sum(-1)


# -- dense stage -----------------------------------------------------------------------

def robust_photometric_loss(render: torch.Tensor, target: torch.Tensor, region: torch.Tensor,
                            sigma: float = 0.15) -> torch.Tensor:
    """Robust per-pixel colour error over a region.

    render, target: (B,H,W,3) in [0,1]; region: (B,H,W) float weights.
    The residual norm goes through a Charbonnier core that saturates
    (Geman-McClure) at ``sigma``: a pixel whose colour disagrees strongly —
    background under the mesh edge, an occluder — pulls with bounded force.
    -> (B,) weighted mean
    """
    sq = (render - target).square().sum(-1)  # (B,H,W)
    r = gmof(sq, sigma) / (sigma * sigma)
    return (r * region).sum((1, 2)) / region.sum((1, 2)).clamp(min=1.0)


def gradient_loss(render: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients (structure term). (B,H,W,3) x2, region (B,H,W) -> (B,)"""
    def grads(x):
        return x[:, 1:, :-1] - x[:, :-1, :-1], x[:, :-1, 1:] - x[:, :-1, :-1]

    ry, rx = grads(render)
    ty, tx = grads(target)
    w = region[:, :-1, :-1]
    d = ((ry - ty).abs() + (rx - tx).abs()).sum(-1)
    return (d * w).sum((1, 2)) / w.sum((1, 2)).clamp(min=1.0)


def silhouette_loss(coverage: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Squared difference between the antialiased render coverage and the photo's
    soft hand mask. coverage, target, valid: (B,H,W) -> (B,)"""
    return ((coverage - target).square() * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1.0)


def texture_tv_loss(tex: torch.Tensor) -> torch.Tensor:
    """Total variation of a UV texture (B,T,T,C) -> (B,)"""
    return ((tex[:, 1:] - tex[:, :-1]).abs().mean((1, 2, 3)) + (tex[:, :, 1:] - tex[:, :, :-1]).abs().mean((1, 2, 3)))


def texture_prior_loss(tex: torch.Tensor, prior: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Pull towards the prior texture where observations are weak.
    tex, prior: (B,T,T,3); weight: (B,T,T,1) in [0,1] -> (B,)"""
    return ((tex - prior).square() * weight).mean((1, 2, 3))
