"""Synthetic hands with known ground truth: the example photo, tests and
``bench/synthetic.py`` all draw from here.

A scene is a hand model posed inside its limits, a procedural skin texture,
spherical-harmonics light and a photo-like procedural background (smooth
gradients, blurred blobs, stripes and grain), optionally with an occluder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import axis_angle_to_matrix, matrix_to_axis_angle

SKIN_TONES = np.array([  # sRGB in [0,1], light to dark
    [0.93, 0.78, 0.68], [0.87, 0.69, 0.58], [0.80, 0.60, 0.48], [0.70, 0.50, 0.38],
    [0.58, 0.40, 0.29], [0.45, 0.31, 0.22], [0.33, 0.22, 0.16]])


@dataclass
class SynthScene:
    image: np.ndarray       # (H,W,3) uint8
    mask: np.ndarray        # (H,W) bool, visible hand pixels (occluder removed)
    K: np.ndarray           # (3,3)
    params: dict            # global_orient (3,), pose (P,), shape (S,), transl (3,) tensors
    vertices: np.ndarray    # (V,3) camera frame, metres
    keypoints: np.ndarray   # (21,3) camera frame, metres
    keypoints_2d: np.ndarray  # (21,2) pixels
    texture: np.ndarray     # (T,T,3) float
    side: str
    occluded: bool


def smooth_noise(gen: np.random.Generator, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Band-limited noise in [-1,1]: random values on a coarse grid, bicubic-upsampled. -> (h,w,channels)"""
    g = torch.from_numpy(gen.uniform(-1, 1, (1, channels, cells + 3, cells + 3)).astype(np.float32))
    up = F.interpolate(g, size=(h + 2 * h // cells, w + 2 * w // cells), mode="bicubic", align_corners=False)
    up = up[..., h // cells:h // cells + h, w // cells:w // cells + w]
    return up[0].permute(1, 2, 0).clamp(-1, 1).numpy()


def skin_texture(gen: np.random.Generator, size: int = 256) -> np.ndarray:
    """A skin-like UV texture (size,size,3) in [0,1]: a random tone, blotches and fine grain."""
    base = SKIN_TONES[gen.integers(len(SKIN_TONES))] * gen.uniform(0.92, 1.08, 3)
    low = smooth_noise(gen, size, size, 6, 3) * 0.06
    mid = smooth_noise(gen, size, size, 24, 1) * 0.05
    grain = gen.normal(0, 0.015, (size, size, 1))
    # a redder tint in some regions (palms and knuckles are pinker)
    red = np.clip(smooth_noise(gen, size, size, 4, 1), 0, 1) * np.array([0.06, -0.02, -0.02])
    return np.clip(base + low + mid + grain + red, 0, 1).astype(np.float32)


def background(gen: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like background (h,w,3) in [0,1]."""
    c0, c1 = gen.uniform(0.05, 0.95, 3), gen.uniform(0.05, 0.95, 3)
    t = np.linspace(0, 1, w)[None, :, None] * gen.uniform(-1, 1) + np.linspace(0, 1, h)[:, None, None] * gen.uniform(-1, 1)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    img = c0 * (1 - t) + c1 * t
    img = img + smooth_noise(gen, h, w, 5, 3) * 0.25
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(gen.integers(3, 8)):  # blurred blobs
        cy, cx, r = gen.uniform(0, h), gen.uniform(0, w), gen.uniform(0.05, 0.3) * max(h, w)
        a = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - 0.8 * a) + gen.uniform(0, 1, 3) * 0.8 * a
    if gen.random() < 0.5:  # stripes: a textured surface
        f = gen.uniform(0.02, 0.08)
        ang = gen.uniform(0, np.pi)
        s = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * f * 2 * np.pi)[..., None]
        img = img + s * gen.uniform(0.03, 0.12)
    img = img + gen.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def random_params(model, gen: np.random.Generator, K: np.ndarray, size: tuple, spread: float = 0.6) -> dict:
    """Pose inside the limits (blended towards rest by ``spread``), shape ~ N(0,0.7²),
    palm roughly towards the camera ±60°, wrist placed so the hand is in frame."""
    lo, hi = model.pose_lower.cpu().numpy(), model.pose_upper.cpu().numpy()
    pose = (lo + (hi - lo) * gen.uniform(0, 1, lo.shape)) * gen.uniform(0.2, spread)
    pose = np.clip(pose, lo, hi)
    shape = np.clip(gen.normal(0, 0.7, model.shape_dim), -2, 2)
    # Orientation: the model's rest frame turned to face the camera, then a random tilt.
    axis = gen.normal(size=3)
    axis /= np.linalg.norm(axis)
    tilt = axis * gen.uniform(0, np.deg2rad(60))
    R = axis_angle_to_matrix(torch.tensor(tilt, dtype=torch.float64)) @ facing_camera(model)
    go = matrix_to_axis_angle(R).numpy()
    H, W = size
    z = gen.uniform(0.35, 0.6)
    f = K[0, 0]
    u, v = gen.uniform(0.35, 0.65) * W, gen.uniform(0.55, 0.75) * H  # wrist in the lower middle
    transl = np.array([(u - K[0, 2]) * z / f, (v - K[1, 2]) * z / K[1, 1], z])
    dt = torch.float32
    return {"global_orient": torch.tensor(go, dtype=dt), "pose": torch.tensor(pose, dtype=dt),
            "shape": torch.tensor(shape, dtype=dt), "transl": torch.tensor(transl, dtype=dt)}


def facing_camera(model) -> torch.Tensor:
    """Rotation (3,3) taking the rest hand to fingers up (−y in camera) with the palm to the camera (−z)."""
    with torch.no_grad():
        out = model(**model.zero_params(1))
        k = out.keypoints[0].double()
        up = F.normalize(k[9] - k[0], dim=0)  # wrist -> middle MCP
        # (index MCP - pinky MCP) x up is the palm normal of a right hand; a
        # left hand is its mirror image, which flips the cross product.
        normal = F.normalize(torch.cross(k[5] - k[17], up, dim=0), dim=0) * (1.0 if model.side == "right" else -1.0)
        up = F.normalize(up - (up @ normal) * normal, dim=0)
        src = torch.stack([torch.cross(up, normal, dim=0), up, normal], 1)  # a proper frame, columns
        dst = torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]], dtype=torch.float64).T
        return dst @ src.T


def render_scene(model, params: dict, K: np.ndarray, size: tuple, texture: np.ndarray, bg: np.ndarray,
                 sh: torch.Tensor | None = None, occluder: dict | None = None) -> SynthScene:
    """Render one hand over a background. size = (H,W)."""
    from .. import render as R
    from ..camera import project

    H, W = size
    p = {k: v[None] for k, v in params.items()}
    with torch.no_grad():
        out = model(**p)
        Kt = torch.as_tensor(K, dtype=torch.float32)[None]
        buf = R.rasterize_mesh(out.vertices, model.faces, Kt, (H, W), uv=model.uv_coords.float(),
                               uv_faces=model.uv_faces, backend="cpu")
        shaded = R.shade(buf, texture=torch.from_numpy(texture)[None], sh=(default_light() if sh is None else sh)[None],
                         background=torch.from_numpy(bg)[None], clamp=True)
        img = shaded["rgb"][0].numpy()
        kp2d = project(out.keypoints, Kt)[0].numpy()
    mask = buf.cover[0, ..., 0].numpy() > 0
    occluded = False
    if occluder is not None:
        yy, xx = np.mgrid[0:H, 0:W]
        occ = ((xx - occluder["cx"]) / occluder["rx"]) ** 2 + ((yy - occluder["cy"]) / occluder["ry"]) ** 2 <= 1
        img = np.where(occ[..., None], occluder["color"], img)
        mask = mask & ~occ
        occluded = True
    img8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return SynthScene(image=img8, mask=mask, K=K, params=params, vertices=out.vertices[0].numpy(),
                 keypoints=out.keypoints[0].numpy(), keypoints_2d=kp2d, texture=texture, side=model.side,
                 occluded=occluded)


def default_light(gen: np.random.Generator | None = None) -> torch.Tensor:
    """SH lighting (9,3): ambient plus a key light from the camera side, optionally randomised."""
    from ..render.shading import default_sh

    sh = default_sh(1)[0]
    if gen is not None:
        sh[1:4] += torch.from_numpy(gen.normal(0, 0.15, (3, 1)).astype(np.float32))
        sh *= float(gen.uniform(0.85, 1.15))
    return sh


def make_scene(model, seed: int, size=(480, 640), occlusion: bool = False, fov_deg: float = 60.0) -> SynthScene:
    """A full random scene for ``seed``."""
    from ..camera import default_focal

    gen = np.random.default_rng(seed)
    H, W = size
    f = default_focal(W, H, fov_deg)
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
    params = random_params(model, gen, K, size)
    tex = skin_texture(gen)
    bg = background(gen, H, W)
    occ = None
    if occlusion:
        # Placed after a dry run so it covers part of the hand (the fingers' middle).
        probe = render_scene(model, params, K, size, tex, bg)
        c = probe.keypoints_2d[gen.choice([6, 10, 14])]
        span = np.ptp(probe.keypoints_2d, axis=0).max()
        occ = {"cx": c[0], "cy": c[1], "rx": span * gen.uniform(0.12, 0.2), "ry": span * gen.uniform(0.12, 0.2),
               "color": gen.uniform(0, 1, 3)}
    return render_scene(model, params, K, size, tex, bg, sh=default_light(gen), occluder=occ)
