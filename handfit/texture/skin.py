"""A per-photo colour model of the hand, seeded by the fitted mesh.

Pixels well inside the rendered hand train a Gaussian for skin, pixels well
outside it one for the background; their posterior gives a soft hand mask of
the photo (for the silhouette term and IoU) and a per-pixel weight that keeps
occluders and background out of the texture and the photometric loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _features(rgb: torch.Tensor) -> torch.Tensor:
    """(…,3) in [0,1] -> (…,3): chroma (r,g normalised) and log brightness; less sensitive to shading."""
    s = rgb.sum(-1, keepdim=True).clamp(min=1e-3)
    return torch.cat([rgb[..., :2] / s, torch.log(s / 3 + 0.02)[..., :1] * 0.25], -1)


def _gaussian(x: torch.Tensor, sel: torch.Tensor, reg: float = 1e-4):
    """Mean (3,) and covariance (3,3) of x[sel]; x: (N,3)."""
    pts = x[sel]
    if pts.shape[0] < 8:
        pts = x
    mu = pts.mean(0)
    d = pts - mu
    cov = d.T @ d / max(pts.shape[0] - 1, 1) + reg * torch.eye(3, dtype=x.dtype, device=x.device)
    return mu, cov


def _loglik(x, mu, cov):
    d = x - mu
    sol = torch.linalg.solve(cov, d.T).T
    return -0.5 * (d * sol).sum(-1) - 0.5 * torch.logdet(cov)


@torch.no_grad()
def hand_probability(photo: torch.Tensor, render_mask: torch.Tensor, valid: torch.Tensor | None = None,
                     margin: int = 4, prior_hand: float = 0.5) -> torch.Tensor:
    """Soft hand mask of the photo.

    photo: (B,H,W,3) in [0,1]; render_mask: (B,H,W) bool/float of the fitted mesh;
    valid: (B,H,W) bool pixels inside the photo. -> (B,H,W) probability of hand in [0,1]
    """
    B, H, W, _ = photo.shape
    m = render_mask.float()[:, None]
    k = 2 * margin + 1
    inner = (-F.max_pool2d(-m, k, 1, margin))[:, 0] > 0.5      # eroded mesh mask
    outer = F.max_pool2d(m, 3 * k, 1, 3 * k // 2)[:, 0] < 0.5  # well outside the mesh
    feats = _features(photo)
    out = torch.zeros(B, H, W, dtype=photo.dtype, device=photo.device)
    for b in range(B):
        x = feats[b].reshape(-1, 3)
        vb = valid[b].reshape(-1) if valid is not None else torch.ones_like(x[:, 0], dtype=torch.bool)
        mu_h, cov_h = _gaussian(x, inner[b].reshape(-1) & vb)
        mu_b, cov_b = _gaussian(x, outer[b].reshape(-1) & vb)
        lh, lb = _loglik(x, mu_h, cov_h), _loglik(x, mu_b, cov_b)
        logit = (lh - lb).clamp(-30, 30) + torch.log(torch.tensor(prior_hand / (1 - prior_hand)))
        out[b] = torch.sigmoid(logit).reshape(H, W) * vb.reshape(H, W)
    return out
