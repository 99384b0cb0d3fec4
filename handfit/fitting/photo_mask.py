"""The photo's hand mask and the image regions the dense stage's terms use.

A per-photo colour model of the hand, seeded by the fitted mesh: pixels well
inside the rendered hand train a Gaussian for skin, pixels well outside it
one for the background; their posterior gives a soft hand mask of the photo
(for the silhouette term and IoU) and a per-pixel weight that keeps
occluders and background out of the texture and the photometric loss.
GrabCut (colour mixtures and a graph cut, the detected skeleton as sure
hand) gives a second mask. :func:`photo_hand_mask` composes the mask the
dense stage uses (``DenseStage.photo_mask``), :func:`confident` the pixels
where it is sure, :func:`image_region` the weights of the image terms, and
:func:`iou` compares masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import to_crop
from ..options import DenseStage
from ..parallel import each

if TYPE_CHECKING:
    from .scene import CropScene


def _box_sum(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over a window of 2r+1 along ``dim`` (-1 or -2) with zero padding, by a cumulative sum."""
    k = 2 * radius + 1
    x = F.pad(x, (radius + 1, radius) if dim == -1 else (0, 0, radius + 1, radius))
    c = x.cumsum(dim)
    n = c.shape[dim]
    return c.narrow(dim, k, n - k) - c.narrow(dim, 0, n - k)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation by a (2r+1)x(2r+1) square: the same as
    ``max_pool2d(mask, 2r+1, 1, r)`` on a 0/1 mask, from two running box sums.
    The square max-pool was a quarter of the dense stage's CPU time; this is
    about 20x cheaper at r = 8 on a 256x256 crop.
    mask: (B,H,W) with values 0 or 1 -> (B,H,W) 0/1 in mask's dtype"""
    if radius <= 0:
        return mask
    m = mask.to(torch.float32)  # exact box sums of 0/1 values up to 2^24 pixels
    return (_box_sum(_box_sum(m, radius, -1), radius, -2) > 0.5).to(mask.dtype)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion by a (2r+1)x(2r+1) square (min-pool, padded as hand).
    (B,H,W) 0/1 -> (B,H,W) 0/1"""
    return 1 - dilate(1 - mask, radius)


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
    m = render_mask.float()
    k = 2 * margin + 1
    inner = erode(m, margin) > 0.5             # eroded mesh mask
    outer = dilate(m, 3 * k // 2) < 0.5        # well outside the mesh
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


@torch.no_grad()
def hand_probability_grabcut(photo: torch.Tensor, render_mask: torch.Tensor, valid: torch.Tensor | None = None,
                             skeleton: torch.Tensor | None = None, near: int = 12, iters: int = 4,
                             sure: float = 0.9) -> torch.Tensor:
    """Soft hand mask of the photo by GrabCut (colour mixtures + a contrast-sensitive
    graph cut), seeded by the fitted mesh: its rendered mask is probably hand, a
    ``near``-pixel band around it probably background, the rest background.
    With ``skeleton``, the detected bones (thin lines) and the palm's core are
    surely hand: a skin-coloured background (a face behind the hand) then
    cannot swallow a finger.

    photo: (B,H,W,3) in [0,1]; render_mask: (B,H,W) bool; valid: (B,H,W) bool;
    skeleton: (B,21,2) detected keypoints in these pixels.
    -> (B,H,W) in [0,1]: ``sure`` for hand, 1 - ``sure`` for background, softened
    over one pixel at the boundary.
    """
    import cv2

    B, H, W, _ = photo.shape
    seeds = render_mask.detach().cpu().numpy() > 0.5                          # (B,H,W)
    bones = np.zeros((B, H, W), np.uint8)
    if skeleton is not None:
        for b in range(B):
            _draw_skeleton(bones[b], skeleton[b].detach().cpu().numpy(), 1)
    m = torch.from_numpy(seeds | (bones > 0)).float()
    band = (dilate(m, near) > 0.5).numpy()   # near the mesh or the skeleton
    img8 = (photo.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    inv = None if valid is None else ~valid.cpu().numpy()

    def cut(b):
        lab = np.full((H, W), cv2.GC_BGD, np.uint8)
        lab[band[b]] = cv2.GC_PR_BGD
        lab[seeds[b]] = cv2.GC_PR_FGD
        if inv is not None:  # left-out pixels (off the photo, up the forearm): no constraint
            lab[inv[b] & (lab == cv2.GC_BGD)] = cv2.GC_PR_BGD
        lab[bones[b] > 0] = cv2.GC_FGD
        hand = (lab == cv2.GC_PR_FGD) | (lab == cv2.GC_FGD)
        if not hand.any() or hand.all():
            return np.zeros((H, W), np.float32)
        cv2.setRNGSeed(0)  # GrabCut's k-means initialisation (a per-thread RNG): the same mask on every run
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(np.ascontiguousarray(img8[b][..., ::-1]), lab, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
        return ((lab == cv2.GC_FGD) | (lab == cv2.GC_PR_FGD)).astype(np.float32)

    out = np.stack(each(cut, range(B))) if B else np.zeros((0, H, W), np.float32)  # the crops side by side
    p = torch.from_numpy(out).to(photo)
    p = F.avg_pool2d(p[:, None], 3, 1, 1, count_include_pad=False)[:, 0]  # boundary pixels are less sure
    p = (1 - sure) + (2 * sure - 1) * p
    if valid is not None:
        p = p * valid.to(p.dtype)
    return p


def _draw_skeleton(lab, kp, value) -> None:
    """Mark the bones of a (21,2) skeleton and the palm's core in ``lab`` (H,W) uint8."""
    import cv2

    from ..keypoints import TREE_BONES  # the kinematic tree: a line from the wrist to every finger base

    palm = kp[[0, 1, 5, 9, 13, 17]]
    side = float(np.ptp(kp, 0).max())
    width = max(1, int(round(side * 0.015)))
    for a, b in TREE_BONES:
        cv2.line(lab, tuple(np.round(kp[a]).astype(int)), tuple(np.round(kp[b]).astype(int)), int(value), width)
    centre = palm.mean(0)
    core = centre + 0.5 * (palm - centre)
    cv2.fillConvexPoly(lab, np.round(core).astype(np.int32), int(value))


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,H,W) bool x2 -> (B,)"""
    inter = (a & b).sum((1, 2)).float()
    union = (a | b).sum((1, 2)).float().clamp(min=1)
    return inter / union


def photo_hand_mask(scene: CropScene, render_mask, kp2d_full, kind: str = "consensus",
                    grabcut_iters: int = 2) -> torch.Tensor:
    """Soft hand mask (B,S,S) of the photo crops, seeded by the mesh's render_mask (B,S,S).

    "colour": one Gaussian per class; "grabcut": colour mixtures and a graph cut,
    with the detected skeleton (kp2d_full (B,21,2)) as sure hand; "consensus":
    GrabCut's mask where the two agree and 0.5 (not used) where they do not.
    Each fails differently (the colour model on skin-coloured backgrounds,
    GrabCut on low-contrast edges), so their agreement is the reliable part.
    ``grabcut_iters``: GrabCut's rounds of re-fitting its colour mixtures
    (:attr:`handfit.options.DenseStage.grabcut_iters`).
    """
    if kind not in ("colour", "grabcut", "consensus"):
        raise ValueError(f"photo_mask must be colour, grabcut or consensus, not {kind!r}")
    if kind != "grabcut":
        colour = hand_probability(scene.target, render_mask, scene.valid)
        if kind == "colour":
            return colour
    det = kp2d_full.detach().cpu().numpy()
    skel = torch.stack([torch.as_tensor(to_crop(det[b], c)) for b, c in enumerate(scene.crops)])
    gc = hand_probability_grabcut(scene.target, render_mask, scene.valid, skel, iters=grabcut_iters)
    if kind == "grabcut":
        return gc
    agree = (gc > 0.5) == (colour > 0.5)
    return torch.where(agree, gc, torch.full_like(gc, 0.5)) * scene.valid.to(gc.dtype)


def confident(skin_p, stage: DenseStage) -> torch.Tensor:
    """(B,S,S) 1 where the photo mask is sure either way. The mask is
    unreliable where hand and background colours overlap (skin-coloured
    backgrounds, shadows); only its confident pixels take part in the
    silhouette term."""
    return ((2 * skin_p - 1).abs() >= stage.mask_confidence).to(skin_p.dtype)


def image_region(cover, valid, skin_p, sure, stage: DenseStage):
    """(B,S,S) weights of the image terms: the rendered hand and a margin
    around it, inside the photo (plus the confident photo hand when the
    background is inpainted, so uncovered hand pixels count too)."""
    with torch.no_grad():
        region = dilate(cover, stage.margin)
        if stage.background == "inpainted":
            region = torch.maximum(region, (skin_p > 0.5).to(region.dtype) * sure)
        return region * valid
