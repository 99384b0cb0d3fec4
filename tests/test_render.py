"""rasterize / interpolate / texture / antialias / camera_to_clip.

Tests that check semantics run on every available device with
``backend="auto"`` (nvdiffrast on CUDA, ours on the CPU); gradient checks that
need float64 run our backend (``backend="cpu"``) on every device.
"""

from __future__ import annotations

import re

import pytest
import torch

from handfit.errors import BackendError, ShapeError, UsageError
from handfit.render import antialias, camera_to_clip, interpolate, make_topology, rasterize, texture


def tol(dtype, device):
    # nvdiffrast computes in float32 whatever the input dtype.
    return 1e-9 if (dtype == torch.float64 and device.type == "cpu") else 2e-4


def ndc_triangle(xy, z=0.0, w=(1.0, 1.0, 1.0), device="cpu", dtype=torch.float64):
    """(1,3,4) clip positions of one triangle given NDC xy (3,2), z/w and w per vertex."""
    xy = torch.as_tensor(xy, dtype=dtype)
    w = torch.as_tensor(w, dtype=dtype)[:, None]
    z = torch.full((3, 1), float(z), dtype=dtype)
    return torch.cat([xy * w, z * w, w], dim=1)[None].to(device)


def pixel_ndc(height, width, dtype=torch.float64):
    y = (2.0 * torch.arange(height, dtype=dtype) + 1.0) / height - 1.0
    x = (2.0 * torch.arange(width, dtype=dtype) + 1.0) / width - 1.0
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return xx, yy


TRI = torch.tensor([[0, 1, 2]], dtype=torch.int32)


# --- rasterize ---------------------------------------------------------------

def test_rasterize_covers_pixel_centres_inside_the_triangle(device, dtype):
    H, W = 12, 16
    xy = [[-0.8, -0.7], [0.9, -0.2], [-0.1, 0.85]]
    rast = rasterize(ndc_triangle(xy, 0.3, device=device, dtype=dtype), TRI.to(device), (H, W))
    assert rast.shape == (1, H, W, 4) and rast.dtype == dtype and rast.device.type == device.type
    xx, yy = pixel_ndc(H, W)
    a, b, c = torch.tensor(xy, dtype=torch.float64)

    def side(p, q):  # edge function, positive on the left of p -> q
        return (q[0] - p[0]) * (yy - p[1]) - (q[1] - p[1]) * (xx - p[0])

    inside = (side(a, b) > 0) & (side(b, c) > 0) & (side(c, a) > 0)
    assert torch.equal(rast[0, ..., 3].cpu() == 1, inside)
    assert (rast[0, ..., 3].cpu()[~inside] == 0).all()
    torch.testing.assert_close(rast[0, ..., 2][inside].cpu(), torch.full((int(inside.sum()),), 0.3, dtype=dtype),
                               atol=tol(dtype, device), rtol=0)


def test_barycentrics_are_perspective_correct(device, dtype):
    # Interpolating the clip coordinates (X, Y, W) themselves must give a point
    # on the pixel's ray: X/W and Y/W equal the pixel centre's NDC.
    H, W = 10, 14
    pos = ndc_triangle([[-0.9, -0.9], [0.95, -0.6], [0.2, 0.95]], 0.1, w=(0.5, 1.7, 3.0),
                       device=device, dtype=dtype)
    rast = rasterize(pos, TRI.to(device), (H, W))
    out = interpolate(pos[..., [0, 1, 3]], rast, TRI.to(device))[0].cpu()
    mask = rast[0, ..., 3].cpu() > 0
    assert mask.sum() > 40
    xx, yy = pixel_ndc(H, W, dtype)
    t = 10 * tol(dtype, device)
    torch.testing.assert_close(out[..., 0][mask] / out[..., 2][mask], xx[mask], atol=t, rtol=0)
    torch.testing.assert_close(out[..., 1][mask] / out[..., 2][mask], yy[mask], atol=t, rtol=0)
    # u, v belong to vertices 0 and 1: interpolating one-hot attributes returns them.
    onehot = torch.eye(3, dtype=dtype, device=device)[None]
    bary = interpolate(onehot, rast, TRI.to(device))[0].cpu()
    torch.testing.assert_close(bary[..., :2], rast[0, ..., :2].cpu(), atol=t, rtol=0)


@pytest.mark.parametrize("swap", [False, True])
def test_nearest_triangle_wins(device, swap):
    # near covers x + y < 0.3, far covers x + y > -0.3: they overlap in a band.
    near = ndc_triangle([[-0.9, -0.9], [1.2, -0.9], [-0.9, 1.2]], z=-0.2, device=device)
    far = ndc_triangle([[0.9, 0.9], [-1.2, 0.9], [0.9, -1.2]], z=0.4, w=(1.0, 2.0, 0.7), device=device)
    pos = torch.cat([far, near] if swap else [near, far], dim=1)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=device)
    rast = rasterize(pos, tri, (16, 16))
    ids = rast[0, ..., 3].cpu()
    near_id, far_id = (2, 1) if swap else (1, 2)
    xx, yy = pixel_ndc(16, 16)
    band = ((xx + yy).abs() < 0.25) & (xx.abs() < 0.8) & (yy.abs() < 0.8)
    assert band.sum() > 8
    assert (ids[band] == near_id).all()
    assert (ids[(xx + yy > 0.35) & (xx < 0.85) & (yy < 0.85)] == far_id).all()
    assert (ids[(xx + yy < -0.35) & (xx > -0.85) & (yy > -0.85)] == near_id).all()
    assert (rast[0, ..., 2].cpu()[band] - (-0.2)).abs().max() < 1e-4


def test_rasterize_accepts_unbatched_pos_and_int64_tri(device):
    pos = ndc_triangle([[-0.9, -0.9], [0.9, -0.9], [0.0, 0.9]], device=device)
    a = rasterize(pos[0], TRI.long().to(device), (8, 8))
    b = rasterize(pos, TRI.to(device), (8, 8))
    assert a.shape == (1, 8, 8, 4)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", ["offscreen", "behind", "beyond_far", "no_faces"])
def test_empty_images(device, case):
    xy = [[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]]
    pos = ndc_triangle(xy, device=device)
    tri = TRI.to(device)
    if case == "offscreen":
        pos = ndc_triangle([[x + 3.0, y] for x, y in xy], device=device)
    elif case == "behind":
        pos = ndc_triangle(xy, z=0.5, w=(-1.0, -1.0, -2.0), device=device)
    elif case == "beyond_far":
        pos = ndc_triangle(xy, z=1.5, device=device)
    else:
        tri = torch.zeros(0, 3, dtype=torch.int32, device=device)
    pos = pos.expand(2, -1, -1).clone().requires_grad_(True)
    rast = rasterize(pos, tri, (8, 10))
    assert rast.shape == (2, 8, 10, 4) and (rast == 0).all()
    col = interpolate(torch.ones(3, 3, dtype=pos.dtype, device=device), rast, tri)
    assert (col == 0).all()
    aa = antialias(col + 0.25, rast, pos, tri)
    torch.testing.assert_close(aa, col + 0.25)
    (aa.sum() + col.sum()).backward()  # the graph must exist even when nothing is drawn
    assert pos.grad is not None and (pos.grad == 0).all()


def test_near_plane_clips_per_pixel(device):
    # Vertex 2 is nearer than the near plane (z/w = -3); z/w is affine in
    # screen space, so the visible part is where that affine z/w >= -1.
    H, W = 24, 24
    xy = torch.tensor([[-0.8, -0.8], [0.8, -0.7], [0.05, 0.8]], dtype=torch.float64)
    zw = torch.tensor([-0.5, -0.4, -3.0], dtype=torch.float64)
    w = torch.tensor([1.0, 1.3, 0.2], dtype=torch.float64)
    pos = torch.cat([xy * w[:, None], (zw * w)[:, None], w[:, None]], dim=1)[None].to(device, torch.float32)
    rast = rasterize(pos, TRI.to(device), (H, W))
    xx, yy = pixel_ndc(H, W)
    a, b, c = xy
    area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    l0 = ((b[0] - xx) * (c[1] - yy) - (b[1] - yy) * (c[0] - xx)) / area
    l1 = ((c[0] - xx) * (a[1] - yy) - (c[1] - yy) * (a[0] - xx)) / area
    l2 = 1 - l0 - l1
    depth = l0 * zw[0] + l1 * zw[1] + l2 * zw[2]
    inside = (l0 > 0) & (l1 > 0) & (l2 > 0)
    expect = inside & (depth >= -1)
    assert expect.sum() > 50 and (inside & ~expect).sum() > 20
    got = rast[0, ..., 3].cpu() > 0
    assert (got != expect).sum() <= 1  # at most a pixel on the clip line
    torch.testing.assert_close(rast[0, ..., 2].cpu()[got & expect].double(), depth[got & expect], atol=1e-4, rtol=0)


def test_batches_render_like_single_items(device):
    from test_render_reference import random_soup

    pos, tri = random_soup(3, 25, seed=4, dtype=torch.float32)
    pos, tri = pos.to(device), tri.to(device)
    attr = torch.rand(3, pos.shape[1], 2, device=device)
    rast = rasterize(pos, tri, (20, 24))
    col = antialias(interpolate(attr, rast, tri), rast, pos, tri)
    for b in range(3):
        rb = rasterize(pos[b:b + 1], tri, (20, 24))
        torch.testing.assert_close(rast[b:b + 1], rb)
        cb = antialias(interpolate(attr[b:b + 1], rb, tri), rb, pos[b:b + 1], tri)
        torch.testing.assert_close(col[b:b + 1], cb)
    assert not torch.equal(rast[0], rast[1])  # different geometry per item


def test_vertex_gradients_match_finite_differences(device):
    # Loss over interior pixels only (far from edges), so no pixel changes
    # triangle under the perturbation and the loss is smooth in pos.
    H, W = 16, 16
    pos0 = ndc_triangle([[-0.9, -0.85], [0.9, -0.6], [-0.2, 0.9]], 0.2, w=(0.8, 1.5, 2.5), device=device)
    pos0 = pos0 + 0.01 * torch.randn(pos0.shape, generator=torch.Generator().manual_seed(1),
                                     dtype=pos0.dtype).to(device)
    attr = torch.tensor([[[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]]], dtype=torch.float64, device=device)
    weights = torch.randn(1, H, W, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    rast0 = rasterize(pos0, TRI.to(device), (H, W), backend="cpu")
    u, v = rast0[..., 0], rast0[..., 1]
    interior = ((rast0[..., 3] > 0) & (u > 0.08) & (v > 0.08) & (1 - u - v > 0.08))[..., None]
    assert interior.sum() > 20

    def loss(p):
        r = rasterize(p, TRI.to(device), (H, W), backend="cpu")
        return (interpolate(attr, r, TRI.to(device), backend="cpu") * weights * interior).sum()

    def loss_rast(p):  # straight from the (u, v) channels of rast
        r = rasterize(p, TRI.to(device), (H, W), backend="cpu")
        return (r[..., :2] * weights * interior).sum()

    eps = 1e-6
    for fn in (loss, loss_rast):
        pos = pos0.clone().requires_grad_(True)
        fn(pos).backward()
        fd = torch.zeros_like(pos0)
        for i in range(3):
            for k in range(4):
                d = torch.zeros_like(pos0)
                d[0, i, k] = eps
                fd[0, i, k] = (fn(pos0 + d) - fn(pos0 - d)) / (2 * eps)
        torch.testing.assert_close(pos.grad, fd, atol=1e-6, rtol=1e-5)
        assert pos.grad[0, :, [0, 1, 3]].abs().min() > 1e-3  # x, y, w all matter
        assert (pos.grad[0, :, 2] == 0).all()


# --- interpolate -------------------------------------------------------------

def small_scene(device, dtype=torch.float64, batch=2):
    from test_render_reference import random_soup

    pos, tri = random_soup(batch, 10, seed=7, dtype=dtype, spread=0.5)
    return pos.to(device), tri.to(device)


@pytest.mark.slow
def test_interpolate_gradcheck(device):
    pos, tri = small_scene(device)
    rast = rasterize(pos, tri, (8, 9), backend="cpu").detach()
    assert (rast[..., 3] > 0).sum() > 12
    attr = torch.randn(2, pos.shape[1], 3, dtype=torch.float64, device=device, requires_grad=True)
    rast.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, r: interpolate(a, r, tri, backend="cpu"), (attr, rast))
    shared = torch.randn(pos.shape[1], 2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, r: interpolate(a, r, tri, backend="cpu"), (shared, rast))


def test_interpolate_broadcasts_and_takes_a_separate_attribute_index(device, dtype):
    pos, tri = small_scene(device, dtype)
    rast = rasterize(pos, tri, (12, 12))
    attr = torch.rand(pos.shape[1], 2, dtype=dtype, device=device)
    a = interpolate(attr, rast, tri)
    b = interpolate(attr[None].expand(2, -1, -1), rast, tri)
    torch.testing.assert_close(a, b)
    assert (a[rast[..., 3] == 0] == 0).all()
    # Face-corner table (F*3 rows, reversed order) with its own triangle index.
    corners = attr[tri.long()].flip(0).reshape(-1, 2)
    tri_corner = torch.arange(tri.shape[0] * 3, device=device).view(-1, 3).flip(0).to(torch.int32)
    c = interpolate(corners, rast, tri_corner)
    torch.testing.assert_close(a, c, atol=tol(dtype, device), rtol=0)


# --- texture -----------------------------------------------------------------

def test_texture_hits_texel_centres_and_blends_between(device, dtype):
    tex = torch.rand(2, 4, 5, 3, dtype=dtype, device=device)
    i, j = torch.meshgrid(torch.arange(4, dtype=dtype), torch.arange(5, dtype=dtype), indexing="ij")
    uv = torch.stack([(j + 0.5) / 5, (i + 0.5) / 4], dim=-1).to(device)[None].expand(2, -1, -1, -1)
    t = tol(dtype, device)
    for mode in ("clamp", "wrap", "zero"):
        torch.testing.assert_close(texture(tex, uv, boundary_mode=mode), tex, atol=t, rtol=0)
    mid = torch.tensor([[[[2.0 / 5, 1.5 / 4]]]], dtype=dtype, device=device).expand(2, 1, 1, 2)  # between (1,1)&(1,2)
    torch.testing.assert_close(texture(tex, mid)[:, 0, 0], (tex[:, 1, 1] + tex[:, 1, 2]) / 2, atol=t, rtol=0)
    near = texture(tex, mid + 0.01, filter_mode="nearest")[:, 0, 0]
    torch.testing.assert_close(near, tex[:, 1, 2], atol=t, rtol=0)


def test_texture_boundary_modes(device):
    tex = torch.rand(1, 4, 6, 2, device=device)
    uv = torch.rand(1, 5, 5, 2, device=device)
    torch.testing.assert_close(texture(tex, uv + 1.0, boundary_mode="wrap"), texture(tex, uv, boundary_mode="wrap"),
                               atol=1e-5, rtol=0)
    # wrap: halfway between the last and the first texel of row 0.
    seam = torch.tensor([[[[0.0, 0.5 / 4]]]], device=device)
    torch.testing.assert_close(texture(tex, seam, boundary_mode="wrap")[0, 0, 0], (tex[0, 0, 0] + tex[0, 0, -1]) / 2,
                               atol=1e-5, rtol=0)
    far = torch.tensor([[[[-3.0, 7.0]]]], device=device)  # clamp: bottom-left texel
    torch.testing.assert_close(texture(tex, far, boundary_mode="clamp")[0, 0, 0], tex[0, -1, 0])
    assert (texture(tex, far, boundary_mode="zero") == 0).all()


@pytest.mark.parametrize("mode", ["clamp", "wrap", "zero"])
def test_texture_gradcheck(device, mode):
    g = torch.Generator().manual_seed(3)
    tex = torch.rand(2, 5, 4, 2, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    # Random, off-grid uv (gradients kink at texel centres), some outside [0,1].
    uv = (torch.rand(2, 3, 4, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, u: texture(t, u, boundary_mode=mode, backend="cpu"), (tex, uv))


# --- antialias ---------------------------------------------------------------

def edge_quad(xt, xb, device, dtype=torch.float64, w_right=1.0):
    """A quad covering the left of the screen; its right edge runs from NDC
    (xt, -1.5) to (xb, 1.5) and is the only silhouette on screen."""
    xy = torch.tensor([[-1.5, -1.5], [xt, -1.5], [xb, 1.5], [-1.5, 1.5]], dtype=dtype)
    w = torch.tensor([1.0, w_right, w_right, 1.0], dtype=dtype)[:, None]
    pos = torch.cat([xy * w, torch.zeros(4, 1, dtype=dtype), w], dim=1)[None].to(device)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32, device=device)
    return pos, tri


def coverage(pos, tri, res, backend="auto"):
    rast = rasterize(pos, tri, res, backend=backend)
    mask = (rast[..., 3:] > 0).to(pos.dtype)
    return antialias(mask, rast, pos, tri, backend=backend)


def test_antialiased_coverage_measures_the_area(device, dtype):
    H, W = 10, 12
    # Vertical edge at pixel x = 7.3: every row covers exactly 7.3 pixels.
    x = 7.3 / W * 2 - 1
    pos, tri = edge_quad(x, x, device, dtype)
    cov = coverage(pos, tri, (H, W))
    torch.testing.assert_close(cov.sum(-1).sum(-1).sum(-1), torch.full((1,), 7.3 * H, dtype=dtype, device=device),
                               atol=1e-3, rtol=0)
    assert ((cov > 0) & (cov < 1)).sum() == H  # one blended pixel per row
    # A slanted edge: the blended area approximates the exact one.
    xt, xb = -0.1, 0.35
    pos, tri = edge_quad(xt, xb, device, dtype)
    cov = coverage(pos, tri, (H, W))
    centre_x = [((xt + (xb - xt) * ((2 * r + 1) / H - 1 + 1.5) / 3.0) + 1) * W / 2 for r in range(H)]
    assert abs(cov.sum().item() - sum(centre_x)) < 0.02 * H


def test_antialias_leaves_interior_edges_alone(device):
    pos, tri = edge_quad(0.3, 0.3, device)
    rast = rasterize(pos, tri, (12, 12))
    col = interpolate(torch.rand(4, 3, dtype=pos.dtype, device=device), rast, tri)
    out = antialias(col, rast, pos, tri)
    changed = (out - col).abs().amax(-1)[0] > 1e-7
    cols = changed.nonzero()[:, 1]
    assert changed.any() and ((cols >= 6) & (cols <= 8)).all()  # only next to the edge at x = 7.8


def test_antialias_edge_gradient_sign_and_magnitude(device):
    # d(total coverage)/d(edge x in pixels) = number of rows the edge crosses,
    # split between the two end vertices by how close each row is to them.
    H, W = 10, 12
    xt, xb = 0.18, 0.31
    pos0, tri = edge_quad(xt, xb, device)
    pos = pos0.clone().requires_grad_(True)
    coverage(pos, tri, (H, W), backend="cpu").sum().backward()
    g = pos.grad[0]
    rows = torch.arange(H, dtype=torch.float64)
    s = ((2 * rows + 1) / H - 1 + 1.5) / 3.0  # position of each row centre along the edge
    expect_top = (1 - s).sum() * W / 2  # per NDC unit of the top vertex's x
    expect_bot = s.sum() * W / 2
    assert g[1, 0] > 0 and g[2, 0] > 0  # moving the edge right adds coverage
    assert abs(g[1, 0].item() - expect_top) < 1e-6 and abs(g[2, 0].item() - expect_bot) < 1e-6
    assert (g[[0, 3]] == 0).all()  # off-silhouette vertices get nothing
    # Finite differences, also through w.
    pos0w, tri = edge_quad(xt, xb, device, w_right=1.7)
    posw = pos0w.clone().requires_grad_(True)
    coverage(posw, tri, (H, W), backend="cpu").sum().backward()
    eps = 1e-6
    for i in (1, 2):
        for k in (0, 1, 3):
            d = torch.zeros_like(pos0w)
            d[0, i, k] = eps
            fd = (coverage(pos0w + d, tri, (H, W), backend="cpu").sum()
                  - coverage(pos0w - d, tri, (H, W), backend="cpu").sum()) / (2 * eps)
            assert abs(posw.grad[0, i, k].item() - fd.item()) < 1e-5 * max(1.0, abs(fd.item()))


def test_antialias_color_gradcheck(device):
    pos, tri = small_scene(device)
    rast = rasterize(pos, tri, (8, 9), backend="cpu")
    color = torch.rand(2, 8, 9, 2, dtype=torch.float64, device=device, requires_grad=True)
    out = antialias(color, rast, pos, tri, backend="cpu")
    assert not torch.equal(out, color)  # something is blended
    # fast_mode checks random projections of the Jacobian: 288 inputs would
    # otherwise need 576 antialias calls.
    assert torch.autograd.gradcheck(lambda c: antialias(c, rast, pos, tri, backend="cpu"), (color,),
                                    fast_mode=True)


# --- camera_to_clip ----------------------------------------------------------

def test_camera_to_clip_matches_the_pixel_convention(dtype):
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2, 7, 3, generator=g, dtype=dtype) * torch.tensor([0.2, 0.2, 1.0], dtype=dtype) \
        + torch.tensor([-0.1, -0.1, 0.3], dtype=dtype)
    K = torch.tensor([[[300.0, 0.0, 61.0], [0.0, 310.0, 45.0], [0.0, 0.0, 1.0]],
                      [[250.0, 0.0, 64.0], [0.0, 250.0, 48.0], [0.0, 0.0, 1.0]]], dtype=dtype)
    H, W = 96, 128
    clip = camera_to_clip(pts, K, (H, W), near=0.1, far=5.0)
    u = K[:, None, 0, 0] * pts[..., 0] / pts[..., 2] + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * pts[..., 1] / pts[..., 2] + K[:, None, 1, 2]
    torch.testing.assert_close(clip[..., 0] / clip[..., 3], 2 * (u + 0.5) / W - 1)
    torch.testing.assert_close(clip[..., 1] / clip[..., 3], 2 * (v + 0.5) / H - 1)
    torch.testing.assert_close(clip[..., 3], pts[..., 2])
    zs = torch.tensor([[[0.0, 0.0, 0.1], [0.0, 0.0, 5.0]]], dtype=dtype)
    zc = camera_to_clip(zs, K[0], (H, W), near=0.1, far=5.0)
    torch.testing.assert_close(zc[0, :, 2] / zc[0, :, 3], torch.tensor([-1.0, 1.0], dtype=dtype))


def test_camera_point_lands_in_its_pixel_with_row_zero_on_top(device):
    # A tiny triangle around the ray through pixel (u, v) = (5, 2) must cover
    # exactly that pixel: column 5, row 2 counted from the top.
    K = torch.tensor([[100.0, 0.0, 7.5], [0.0, 100.0, 5.5], [0.0, 0.0, 1.0]], device=device)
    z = 0.5
    u, v = 5.0, 2.0
    centre = torch.tensor([(u - 7.5) * z / 100, (v - 5.5) * z / 100, z], device=device)
    r = 0.3 * z / 100  # 0.3 px
    pts = centre + torch.tensor([[-r, -r, 0.0], [r, -r, 0.0], [0.0, r, 0.0]], device=device)
    rast = rasterize(camera_to_clip(pts, K, (12, 16)), TRI.to(device), (12, 16))
    hit = (rast[0, ..., 3] > 0).nonzero().tolist()
    assert hit == [[2, 5]]


# --- backend selection -------------------------------------------------------

def test_backend_selection_errors():
    pos = ndc_triangle([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]])
    with pytest.raises(UsageError):
        rasterize(pos, TRI, (4, 4), backend="opengl")
    with pytest.raises(BackendError):
        rasterize(pos, TRI, (4, 4), backend="nvdiffrast")  # CPU tensors
    with pytest.raises(UsageError):
        texture(torch.rand(1, 2, 2, 3), torch.rand(1, 2, 2, 2), filter_mode="linear-mipmap-linear")
    with pytest.raises(ValueError):
        rasterize(pos, TRI + 1, (4, 4), backend="cpu")  # index 3 of 3 vertices


def test_visibility_fast_path_and_general_path_agree(device):
    # rasterize(..., return_visibility=True) hands back the covered-pixel list
    # to pass on explicitly; without it interpolate/antialias read rast itself.
    # Both paths give the same values and the same gradients.
    pos0, tri = small_scene(device)
    g = torch.Generator().manual_seed(5)
    attr0 = torch.rand(2, pos0.shape[1], 3, generator=g, dtype=torch.float64).to(device)
    col0 = torch.rand(2, 12, 12, 3, generator=g, dtype=torch.float64).to(device)
    weights = torch.randn(2, 12, 12, 3, generator=g, dtype=torch.float64).to(device)

    def run(fast):
        pos, attr, col = (x.clone().requires_grad_(True) for x in (pos0, attr0, col0))
        rast, vis = rasterize(pos, tri, (12, 12), backend="cpu", return_visibility=True)
        kw = {"visibility": vis} if fast else {}
        img = interpolate(attr, rast, tri, backend="cpu", **kw)
        aa = antialias(col + img, rast, pos, tri, backend="cpu", **kw)
        ((img + aa) * weights).sum().backward()
        return rast, img, aa, pos.grad, attr.grad, col.grad

    fast, slow = run(True), run(False)
    assert (fast[0][..., 3] > 0).sum() > 20
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert fast[3].abs().sum() > 0  # gradients reach the vertices on both paths
    torch.testing.assert_close(fast[0], rasterize(pos0, tri, (12, 12), backend="cpu"))


def test_visibility_refuses_another_or_a_modified_rast(device):
    pos, tri = small_scene(device, torch.float32)
    rast, vis = rasterize(pos, tri, (12, 12), backend="cpu", return_visibility=True)
    attr = torch.rand(2, pos.shape[1], 3, device=device)
    col = torch.rand(2, 12, 12, 3, device=device)
    other = rasterize(pos, tri, (12, 12), backend="cpu")
    for wrong in (rast.detach().clone(), other):
        with pytest.raises(ValueError, match="another"):
            interpolate(attr, wrong, tri, backend="cpu", visibility=vis)
        with pytest.raises(ValueError, match="another"):
            antialias(col, wrong, pos, tri, backend="cpu", visibility=vis)
    with torch.no_grad():
        rast[..., :2] = 0.0  # in place: every covered pixel now shows its vertex 2
    with pytest.raises(ValueError, match="modified"):
        interpolate(attr, rast, tri, backend="cpu", visibility=vis)
    with pytest.raises(ValueError, match="modified"):
        antialias(col, rast, pos, tri, backend="cpu", visibility=vis)
    # Without a Visibility the edited rast is read as it now is.
    edited = interpolate(attr, rast, tri, backend="cpu")
    covered = rast[..., 3] > 0
    vertex2 = attr.gather(1, tri.long()[rast[..., 3].long().clamp(min=1) - 1][..., 2].view(2, -1, 1).expand(-1, -1, 3))
    torch.testing.assert_close(edited[covered], vertex2.view(2, 12, 12, 3)[covered])


def test_prebuilt_topology_antialiases_like_building_it_per_call(device):
    pos0, tri = small_scene(device)
    topo = make_topology(tri, "cpu")
    col0 = torch.rand(2, 12, 12, 3, dtype=torch.float64, device=device)

    def run(topology):
        pos, col = pos0.clone().requires_grad_(True), col0.clone().requires_grad_(True)
        rast = rasterize(pos, tri, (12, 12), backend="cpu")
        out = antialias(col, rast, pos, tri, backend="cpu", topology=topology)
        out.square().sum().backward()
        return out, pos.grad, col.grad

    a, b = run(topo), run(None)
    assert not torch.equal(a[0], col0)  # something is blended
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    run(topo)  # reusable


# --- input checks ------------------------------------------------------------

def _bad_inputs():
    pos = ndc_triangle([[-0.8, -0.8], [0.8, -0.8], [0.0, 0.8]])
    rast = rasterize(pos, TRI, (4, 4))
    attr = torch.rand(3, 2, dtype=torch.float64)
    tex, uv = torch.rand(1, 2, 2, 3), torch.rand(1, 4, 4, 2)
    col = torch.rand(1, 4, 4, 3, dtype=torch.float64)
    tri2 = torch.zeros(1, 2, dtype=torch.int32)
    return {
        "rasterize-pos-rank": (lambda: rasterize(pos[None], TRI, (4, 4)), "pos", (1, 1, 3, 4)),
        "rasterize-pos-last": (lambda: rasterize(pos[..., :3], TRI, (4, 4)), "pos", (1, 3, 3)),
        "rasterize-tri-rank": (lambda: rasterize(pos, TRI.view(-1), (4, 4)), "tri", (3,)),
        "rasterize-tri-last": (lambda: rasterize(pos, torch.zeros(1, 4, dtype=torch.int32), (4, 4)), "tri", (1, 4)),
        "interpolate-attr-rank": (lambda: interpolate(attr[:, 0], rast, TRI), "attr", (3,)),
        "interpolate-attr-rank4": (lambda: interpolate(attr[None, None], rast, TRI), "attr", (1, 1, 3, 2)),
        "interpolate-rast-rank": (lambda: interpolate(attr, rast[0], TRI), "rast", (4, 4, 4)),
        "interpolate-rast-last": (lambda: interpolate(attr, rast[..., :3], TRI), "rast", (1, 4, 4, 3)),
        "interpolate-tri-last": (lambda: interpolate(attr, rast, tri2), "tri", (1, 2)),
        "texture-tex-rank": (lambda: texture(tex[0], uv), "tex", (2, 2, 3)),
        "texture-uv-rank": (lambda: texture(tex, uv[0]), "uv", (4, 4, 2)),
        "texture-uv-last": (lambda: texture(tex, torch.rand(1, 4, 4, 3)), "uv", (1, 4, 4, 3)),
        "antialias-color-rank": (lambda: antialias(col[0], rast, pos, TRI), "color", (4, 4, 3)),
        "antialias-rast-last": (lambda: antialias(col, rast[..., :2], pos, TRI), "rast", (1, 4, 4, 2)),
        "antialias-pos-last": (lambda: antialias(col, rast, pos[..., :3], TRI), "pos", (1, 3, 3)),
        "antialias-tri-rank": (lambda: antialias(col, rast, pos, TRI[None]), "tri", (1, 1, 3)),
        "make_topology-tri-last": (lambda: make_topology(tri2), "tri", (1, 2)),
    }


BAD = _bad_inputs()


@pytest.mark.parametrize("case", list(BAD))
def test_ops_refuse_wrong_shapes_quoting_them(case):
    call, name, shape = BAD[case]
    with pytest.raises(ShapeError, match=re.escape(f"{name} must be") + ".*" + re.escape(f"got shape {shape}")):
        call()


def test_shape_error_is_a_usage_error_and_names_non_tensors():
    assert issubclass(ShapeError, UsageError) and issubclass(ShapeError, ValueError)
    pos = ndc_triangle([[-0.8, -0.8], [0.8, -0.8], [0.0, 0.8]])
    with pytest.raises(ShapeError, match="pos must be a torch.Tensor.*got list"):
        rasterize(pos.tolist(), TRI, (4, 4))
    with pytest.raises(ShapeError, match="tri must be a torch.Tensor.*got ndarray"):
        rasterize(pos, TRI.numpy(), (4, 4))


# --- rasterize_mesh + shade --------------------------------------------------

def test_shading_buffers_equals_render_mesh(device):
    from test_render_mesh import RES, scene

    from handfit.render import default_sh, rasterize_mesh, render_mesh, shade

    verts, f, K, uv, uvf = scene(device)
    g = torch.Generator().manual_seed(6)
    tex1, tex2 = (torch.rand(2, 8, 8, 3, generator=g).to(device) for _ in range(2))
    sh = default_sh(2, device=device)
    bg = torch.full((1, 1, 1, 3), 0.3, device=device)
    buf = rasterize_mesh(verts, f, K, RES, uv=uv, uv_faces=uvf, points=True)
    assert buf.backend == ("nvdiffrast" if device.type == "cuda" else "cpu")
    assert buf.rast.shape == (2, *RES, 4) and buf.uv.shape == (2, *RES, 2)
    out1 = shade(buf, texture=tex1, sh=sh, background=bg)
    ref1 = render_mesh(verts, f, K, RES, uv=uv, uv_faces=uvf, texture=tex1, sh=sh, background=bg)
    torch.testing.assert_close(out1["rgb"], ref1["rgb"])
    torch.testing.assert_close(out1["coverage"], ref1["mask"])
    torch.testing.assert_close(out1["albedo"], ref1["albedo"])
    torch.testing.assert_close(buf.rast, ref1["rast"])
    torch.testing.assert_close(buf.normals, ref1["normals"])
    torch.testing.assert_close(buf.points[..., 2:3], ref1["depth"])
    # The same buffers shaded again with another texture: as a second full render.
    out2 = shade(buf, texture=tex2, sh=sh, background=bg)
    ref2 = render_mesh(verts, f, K, RES, uv=uv, uv_faces=uvf, texture=tex2, sh=sh, background=bg)
    torch.testing.assert_close(out2["rgb"], ref2["rgb"])
    assert not torch.allclose(out1["rgb"], out2["rgb"])
    # ...and the first one again: shading leaves the buffers as they were.
    torch.testing.assert_close(shade(buf, texture=tex1, sh=sh, background=bg)["rgb"], out1["rgb"])


def test_buffers_remember_their_backend():
    from test_render_mesh import RES, scene

    from handfit.render import rasterize_mesh, shade

    verts, f, K, uv, uvf = scene(torch.device("cpu"))
    buf = rasterize_mesh(verts, f, K, RES, uv=uv, uv_faces=uvf, backend="cpu")
    assert buf.backend == "cpu" and buf.topology is None
    tex = torch.rand(1, 4, 4, 3)
    out = shade(buf, texture=tex)
    assert buf.topology is not None  # built once on the first antialiased shade, then kept
    topo = buf.topology
    shade(buf, texture=tex)
    assert buf.topology is topo
    assert out["rgb"].shape == (2, *RES, 3)
    with pytest.raises(ValueError, match="uv"):
        shade(rasterize_mesh(verts, f, K, RES, backend="cpu"), texture=tex)


def test_nvdiffrast_build_failure_is_a_backend_error(monkeypatch):
    # CUDA present but the plugin cannot compile: BackendError naming the cause.
    import nvdiffrast.torch as dr

    from handfit.render import nvdr

    def broken():
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(nvdr, "_dr", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dr.ops, "_get_plugin", broken)
    monkeypatch.setattr(nvdr, "_missing_tools", lambda: ["ninja"])
    with pytest.raises(BackendError, match=r"missing ninja.*--renderer cpu"):
        nvdr.make_context(torch.device("cuda", 0))
    assert nvdr._dr is None  # a later call tries again
