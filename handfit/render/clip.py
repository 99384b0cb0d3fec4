"""OpenCV camera frame -> clip space: the one place this conversion happens."""

from __future__ import annotations

import torch


def camera_to_clip(points: torch.Tensor, K: torch.Tensor, resolution, near: float = 0.01,
                   far: float = 10.0) -> torch.Tensor:
    """Clip-space positions of camera-frame points, for :func:`rasterize`.

    Args:
        points: (B,V,3) or (V,3) points in the OpenCV camera frame (x right,
            y down, z forward, metres).
        K: (B,3,3) or (3,3) intrinsics ``[[fx,s,cx],[0,fy,cy],[0,0,1]]`` in
            OpenCV pixel units (centre of the top-left pixel at (0,0)).
        resolution: (H,W) of the image the intrinsics refer to.
        near, far: depth range in metres kept by the rasterizer; z_ndc is -1
            at ``near`` and +1 at ``far`` (OpenGL convention).

    Returns:
        (B,V,4) clip coordinates ``(x_ndc*z, y_ndc*z, z_ndc*z, z)`` with
        ``x_ndc = 2(u+0.5)/W - 1`` and ``y_ndc = 2(v+0.5)/H - 1``, where (u,v)
        is the pinhole projection in pixels. Pixel row 0 (top) maps to
        y_ndc = -1, which both backends rasterize into row 0: no flip.
        Written without a division by z, so points behind the camera get
        w = z <= 0 and are clipped rather than mirrored.
    """
    if points.dim() == 2:
        points = points[None]
    if K.dim() == 2:
        K = K[None]
    height, width = int(resolution[0]), int(resolution[1])
    K = K.to(points.dtype)
    # clip = points @ M + c, with M (B,3,4) made from K: one product over the
    # vertices instead of a dozen elementwise ops (this runs every fitting iteration).
    z = torch.zeros_like(K[:, 0])                                   # (B,3)
    ez = z.clone()
    ez[:, 2] = 1.0
    M = torch.stack([(2.0 / width) * K[:, 0] + (1.0 / width - 1.0) * ez,
                     (2.0 / height) * K[:, 1] + (1.0 / height - 1.0) * ez,
                     ((far + near) / (far - near)) * ez, ez], dim=-1)  # (B,3,4)
    c = points.new_tensor([0.0, 0.0, -2.0 * far * near / (far - near), 0.0])
    return points @ M + c
