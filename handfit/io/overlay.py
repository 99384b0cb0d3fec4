"""overlay.png: what the fit looks like, side by side.

Panels, left to right: the photo; the textured mesh rendered over it with
the fitted keypoints; the mesh's visible triangle edges over it; a novel view
(each hand turned 60° about its own vertical axis) of the textured, lit mesh.
"""

from __future__ import annotations

import numpy as np
import torch

from ..keypoints import SKELETON

PANEL_MAX = 640  # longest side of one panel, pixels


def _render_hands(hands, K, size, rotate_deg: float = 0.0, device="cpu", backend: str = "auto"):
    """Render every hand with its texture into one (H,W) image, nearest hand wins.

    -> rgb (H,W,3) float, mask (H,W) float coverage, tri (H,W) long ids (-1 background), hand (H,W) index
    """
    from .. import render as R
    from ..render.shading import lambert

    H, W = size
    dev = torch.device(device)
    best_z = torch.full((H, W), float("inf"), device=dev)
    rgb = torch.zeros(H, W, 3, device=dev)
    cover = torch.zeros(H, W, device=dev)
    tri = torch.full((H, W), -1, dtype=torch.long, device=dev)
    who = torch.full((H, W), -1, dtype=torch.long, device=dev)
    Kt = torch.as_tensor(K, dtype=torch.float32, device=dev)[None]
    for i, h in enumerate(hands):
        v = torch.as_tensor(h.vertices, dtype=torch.float32, device=dev)[None]
        if rotate_deg:
            c = v.mean(1, keepdim=True)
            a = np.deg2rad(rotate_deg)
            Ry = torch.tensor([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]],
                              dtype=torch.float32, device=dev)
            v = (v - c) @ Ry.T + c
        tex = torch.as_tensor(h.texture, dtype=torch.float32, device=dev)[None] / 255
        with torch.no_grad():
            buf = R.rasterize_mesh(v, torch.as_tensor(h.faces, device=dev), Kt, (H, W),
                                   uv=torch.as_tensor(h.uv_coords, dtype=torch.float32, device=dev),
                                   uv_faces=torch.as_tensor(h.uv_faces, device=dev), points=True, backend=backend)
            col = R.shade(buf, texture=tex, antialias=False)["albedo"]
            if rotate_deg:
                col = col * lambert(buf.normals, torch.tensor([0.3, -0.4, -1.0], device=dev), ambient=0.45,
                                    diffuse=0.75)
            cov = buf.cover[0, ..., 0] > 0
            z = torch.where(cov, buf.points[0, ..., 2], torch.full_like(best_z, float("inf")))
        win = z < best_z
        best_z = torch.where(win, z, best_z)
        rgb[win] = col[0][win]
        cover[win] = 1.0
        tri[win] = buf.rast[0, ..., 3][win].long() - 1
        who[win] = i
    return rgb.cpu().numpy(), cover.cpu().numpy(), tri.cpu().numpy(), who.cpu().numpy()


def _edges(tri: np.ndarray, who: np.ndarray) -> np.ndarray:
    """Pixels where the visible triangle changes: the mesh's visible edges. -> (H,W) bool"""
    key = np.where(tri >= 0, tri + who * 100000, -1)
    e = np.zeros(tri.shape, bool)
    e[:, 1:] |= key[:, 1:] != key[:, :-1]
    e[1:, :] |= key[1:, :] != key[:-1, :]
    return e & ((tri >= 0) | np.roll(tri >= 0, 1, 0) | np.roll(tri >= 0, 1, 1))


def _draw_keypoints(img: np.ndarray, hands, s: float) -> np.ndarray:
    import cv2

    out = img.copy()
    for h in hands:
        kp = h.keypoints_2d_fitted * s
        for a, b in SKELETON:
            cv2.line(out, tuple(int(round(x)) for x in kp[a]), tuple(int(round(x)) for x in kp[b]),
                     (255, 255, 255), 1, cv2.LINE_AA)
        for p in kp:
            cv2.circle(out, (int(round(p[0])), int(round(p[1]))), 2, (255, 40, 40), -1, cv2.LINE_AA)
    return out


def render_overlay(result, device="cpu", backend: str = "auto") -> np.ndarray:
    """(H', 4W', 3) uint8 panels for a FitResult, rendered on ``device`` with
    ``backend`` ("auto" follows the device)."""
    import cv2

    img = result.image
    H0, W0 = img.shape[:2]
    s = min(1.0, PANEL_MAX / max(H0, W0))
    H, W = max(1, int(round(H0 * s))), max(1, int(round(W0 * s)))
    photo = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA) if s < 1 else img.copy()
    # Scale the intrinsics with the panel (pixel centres stay consistent).
    K = np.array(result.K, dtype=np.float64).copy()
    K[0, 0] *= W / W0
    K[1, 1] *= H / H0
    K[0, 2] = (K[0, 2] + 0.5) * W / W0 - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * H / H0 - 0.5
    base = photo.astype(np.float32) / 255
    panels = [photo]
    if result.hands:
        rgb, cov, tri, who = _render_hands(result.hands, K, (H, W), device=device, backend=backend)
        textured = base * (1 - cov[..., None]) + rgb * cov[..., None]
        textured = (np.clip(textured, 0, 1) * 255 + 0.5).astype(np.uint8)
        panels.append(_draw_keypoints(textured, result.hands, W / W0))
        edges = photo.copy()
        edges[_edges(tri, who)] = (60, 255, 120)
        panels.append(edges)
        rgb2, cov2, _, _ = _render_hands(result.hands, K, (H, W), rotate_deg=60.0, device=device, backend=backend)
        grey = np.full_like(base, 0.18)
        novel = grey * (1 - cov2[..., None]) + rgb2 * cov2[..., None]
        panels.append((np.clip(novel, 0, 1) * 255 + 0.5).astype(np.uint8))
    else:
        panels += [photo] * 3
    sep = np.full((H, 4, 3), 255, np.uint8)
    out = panels[0]
    for p in panels[1:]:
        out = np.concatenate([out, sep, p], 1)
    return out


def write_overlay(path, result, device="cpu", backend: str = "auto", compress: int | None = None) -> np.ndarray:
    """Write :func:`render_overlay`'s panels to ``path`` (PNG, zlib level ``compress``, None:
    the default). -> the panels (H', 4W', 3) uint8, for a caller that also encodes them."""
    from .export import write_png

    img = render_overlay(result, device=device, backend=backend)
    write_png(path, img, compress)
    return img
