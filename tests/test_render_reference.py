"""The numba z-buffer against a plain pixels x faces torch reference.

``naive_rasterize`` is also the slow baseline timed by bench/render.py; it is
a reference only, never a backend.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handfit.render import rasterize
from handfit.render.zbuffer import opposite_vertices


def naive_rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution, snap: bool = True) -> torch.Tensor:
    """Every pixel against every triangle, autograd through everything.

    With ``snap`` triangles in front of the camera get their coverage from
    vertices snapped to 1/16 pixel (like the z-buffer and GPU rasterizers).

    pos (B,V,4) clip coordinates, tri (F,3) -> rast (B,H,W,4) with the same
    meaning as :func:`handfit.render.rasterize`. O(B*H*W*F) memory and time.
    """
    height, width = resolution
    dt, dev = pos.dtype, pos.device
    ys = (2.0 * torch.arange(height, device=dev, dtype=dt) + 1.0) / height - 1.0
    xs = (2.0 * torch.arange(width, device=dev, dtype=dt) + 1.0) / width - 1.0
    yn, xn = torch.meshgrid(ys, xs, indexing="ij")
    xn = xn.reshape(1, -1, 1, 1)
    yn = yn.reshape(1, -1, 1, 1)
    c = pos[:, tri.long()][:, None]  # (B,1,F,3,4)
    ex = c[..., 0] - xn * c[..., 3]  # (B,P,F,3)
    ey = c[..., 1] - yn * c[..., 3]
    e = torch.stack([
        ex[..., 1] * ey[..., 2] - ey[..., 1] * ex[..., 2],
        ex[..., 2] * ey[..., 0] - ey[..., 2] * ex[..., 0],
        ex[..., 0] * ey[..., 1] - ey[..., 0] * ex[..., 1],
    ], dim=-1)  # (B,P,F,3)
    total = e.sum(-1)
    # det(c0, c1, c2) = sum_i e_i W_i is the same for every pixel.
    det = (e * c[..., 3]).sum(-1)
    inside = ((e * det[..., None]) >= 0).all(-1) & (det != 0)
    if snap:
        # Triangles in front of the camera: coverage from vertices snapped to
        # 1/16 px (float32 projection, round half to even), as on the GPU.
        cw = c.detach().float()
        sx = torch.round(cw[..., 0] * (1.0 / cw[..., 3]) * (8.0 * width)).double()  # (B,1,F,3)
        sy = torch.round(cw[..., 1] * (1.0 / cw[..., 3]) * (8.0 * height)).double()
        qx = (xn * (8.0 * width)).double().round()  # pixel centres lie on the grid
        qy = (yn * (8.0 * height)).double().round()
        ex2 = sx - qx
        ey2 = sy - qy
        e2 = torch.stack([ex2[..., 1] * ey2[..., 2] - ey2[..., 1] * ex2[..., 2],
                          ex2[..., 2] * ey2[..., 0] - ey2[..., 2] * ex2[..., 0],
                          ex2[..., 0] * ey2[..., 1] - ey2[..., 0] * ex2[..., 1]], dim=-1)
        area = e2.sum(-1)
        snapped = (cw[..., 3] > 0).all(-1).expand_as(area)
        inside2 = ((e2 * area[..., None]) >= 0).all(-1) & (area != 0)
        inside = torch.where(snapped, inside2, inside)
    depth = (e * c[..., 2]).sum(-1) / torch.where(det == 0, torch.ones_like(det), det)
    inside &= (depth >= -1) & (depth <= 1)
    depth = torch.where(inside, depth.detach(), torch.full_like(depth, float("inf")))
    best = depth.argmin(-1)  # lowest id on ties, like the z-buffer
    hit = inside.gather(-1, best[..., None])[..., 0]
    bary = e / torch.where(total == 0, torch.ones_like(total), total)[..., None]
    bary = bary.gather(2, best[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
    rast = torch.stack([bary[..., 0], bary[..., 1], depth.gather(-1, best[..., None])[..., 0],
                        (best + 1).to(dt)], dim=-1)
    rast = torch.where(hit[..., None], rast, torch.zeros_like(rast))
    rast = torch.cat([rast[..., :2].clamp(0, 1), rast[..., 2:3].clamp(-1, 1), rast[..., 3:]], dim=-1)
    return rast.view(pos.shape[0], height, width, 4)


def random_soup(batch, nfaces, seed, dtype=torch.float64, spread=1.2):
    """Random overlapping triangles in front of the camera, w in [0.5, 2]."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(batch, nfaces, 1, 2, generator=g) * 2 - 1) * spread
    xy = centres + (torch.rand(batch, nfaces, 3, 2, generator=g) - 0.5) * 0.8
    zn = torch.rand(batch, nfaces, 1, 1, generator=g).expand(-1, -1, 3, 1) * 1.6 - 0.8
    zn = zn + (torch.rand(batch, nfaces, 3, 1, generator=g) - 0.5) * 0.1
    w = 0.5 + 1.5 * torch.rand(batch, nfaces, 3, 1, generator=g)
    pos = torch.cat([xy * w, zn * w, w], dim=-1).reshape(batch, nfaces * 3, 4).to(dtype)
    tri = torch.arange(nfaces * 3, dtype=torch.int32).view(nfaces, 3)
    return pos, tri


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zbuffer_matches_naive_reference(seed):
    pos, tri = random_soup(2, 60, seed)
    res = (48, 40)
    ours = rasterize(pos, tri, res, backend="cpu")
    ref = naive_rasterize(pos, tri, res)
    same = (ours[..., 3] == ref[..., 3]).double().mean().item()
    assert same >= 0.999, same
    assert (ours[..., 3] > 0).any() and (ours[..., 3] == 0).any()  # a non-trivial scene
    agree = ours[..., 3] == ref[..., 3]
    torch.testing.assert_close(ours[agree], ref[agree], atol=1e-9, rtol=1e-9)


def test_zbuffer_matches_reference_across_the_camera_plane():
    # Big triangles with vertices behind the camera (w < 0) and past the near
    # plane: homogeneous rasterization must keep exactly the visible part.
    pos = torch.tensor([[[-0.5, -0.5, 0.2, 1.0], [0.5, -0.4, 0.3, 1.0], [0.3, 0.6, -2.0, -0.5],
                         [-1.5, 0.5, -1.5, 0.4], [2.0, 0.2, 0.9, 1.0], [0.0, -3.0, 0.5, 1.2]]],
                       dtype=torch.float64)
    # Jitter the round numbers so no pixel centre lies exactly on an edge,
    # where the two float evaluations may legitimately disagree.
    pos[..., :2] += 0.01 * torch.rand(pos.shape[:-1] + (2,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    res = (32, 32)
    ours = rasterize(pos, tri, res, backend="cpu")
    ref = naive_rasterize(pos, tri, res)
    assert (ours[..., 3] == ref[..., 3]).double().mean().item() >= 0.999
    assert (ours[..., 3] == 1).sum() > 20 and (ours[..., 3] == 2).sum() > 20
    assert (ours[..., 3] == 0).sum() > 20  # the clipped-away part stays empty


def test_opposite_vertices_brute_force():
    from handfit.train.shapes import ellipsoid

    _, faces, _, _ = ellipsoid(rings=5, segments=6)
    tri = faces.numpy()
    opp = opposite_vertices(tri)
    for f, t in enumerate(tri):
        for k in range(3):
            a, b = t[(k + 1) % 3], t[(k + 2) % 3]
            others = [g for g in range(len(tri)) if g != f and a in tri[g] and b in tri[g]]
            assert len(others) == 1  # closed manifold
            far = [v for v in tri[others[0]] if v not in (a, b)][0]
            assert opp[f, k] == far
    # An open fan: boundary edges have no opposite vertex.
    fan = np.array([[0, 1, 2], [0, 2, 3]])
    opp = opposite_vertices(fan)
    assert opp[0, 1] == 3 and opp[1, 2] == 1  # the shared edge 0-2
    assert (opp >= 0).sum() == 2
