"""render_mesh: the one-call textured, lit, antialiased render."""

from __future__ import annotations

import math

import pytest
import torch

from handfit.render import default_sh, render_mesh
from handfit.train.shapes import ellipsoid

RES = (40, 48)


def scene(device, dtype=torch.float32, batch=2):
    v, f, uv, uvf = ellipsoid(rings=10, segments=12, dtype=dtype)
    # Different pose per batch item: rotate about y, push forward.
    verts = []
    for b in range(batch):
        a = 0.4 * b
        R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=dtype)
        verts.append(v @ R.T + torch.tensor([0.005 * b, 0.0, 0.4], dtype=dtype))
    K = torch.tensor([[90.0, 0.0, 23.5], [0.0, 90.0, 19.5], [0.0, 0.0, 1.0]], dtype=dtype)
    return (torch.stack(verts).to(device), f.to(device), K.to(device), uv.to(device), uvf.to(device))


def test_render_mesh_outputs(device):
    verts, f, K, uv, uvf = scene(device)
    tex = torch.rand(1, 8, 8, 3, device=device)
    bg = torch.full((1, 1, 1, 3), 0.3, device=device)
    out = render_mesh(verts, f, K, RES, uv=uv, uv_faces=uvf, texture=tex, sh=default_sh(2, device=device),
                      background=bg)
    B, (H, W) = 2, RES
    assert out["rgb"].shape == (B, H, W, 3) and out["mask"].shape == (B, H, W, 1)
    assert out["rast"].shape == (B, H, W, 4) and out["normals"].shape == (B, H, W, 3)
    assert out["uv"].shape == (B, H, W, 2) and out["depth"].shape == (B, H, W, 1)
    mask = out["mask"]
    assert mask.min() >= 0 and mask.max() <= 1
    assert ((mask > 0) & (mask < 1)).sum() > 20  # antialiased silhouette
    hard = out["rast"][..., 3] > 0
    assert hard.sum() > 200
    # Background shows where nothing is drawn (and away from the silhouette).
    far = mask[..., 0] == 0
    torch.testing.assert_close(out["rgb"][far], torch.full_like(out["rgb"][far], 0.3))
    # Depth is camera z of the surface; visible normals face the camera.
    z = out["depth"][hard]
    assert z.min() > 0.4 - 0.091 and z.max() < 0.4 + 0.091
    assert (out["normals"][hard][:, 2] < 0.05).float().mean() > 0.98
    assert not torch.equal(out["rgb"][0], out["rgb"][1])


def test_face_corner_uvs_equal_indexed_uvs(device):
    verts, f, K, uv, uvf = scene(device)
    tex = torch.rand(2, 6, 7, 3, device=device)
    a = render_mesh(verts, f, K, RES, uv=uv, uv_faces=uvf, texture=tex)
    b = render_mesh(verts, f, K, RES, uv=uv[uvf], texture=tex)  # (F,3,2) corners
    c = render_mesh(verts, f, K, RES, uv=uv[uvf][None].expand(2, -1, -1, -1), texture=tex)  # (B,F,3,2)
    torch.testing.assert_close(a["rgb"], b["rgb"])
    torch.testing.assert_close(a["rgb"], c["rgb"])
    # Unlit, constant texture: the colour is the texture times the coverage.
    flat = render_mesh(verts, f, K, RES, uv=uv, uv_faces=uvf,
                       texture=torch.tensor([0.2, 0.4, 0.6], device=device).view(1, 1, 1, 3))
    torch.testing.assert_close(flat["rgb"], flat["mask"] * torch.tensor([0.2, 0.4, 0.6], device=device),
                               atol=1e-5, rtol=0)


def test_vertex_colors_and_gradients(device):
    verts, f, K, _, _ = scene(device, torch.float64, batch=1)
    colors = torch.rand(verts.shape[1], 3, dtype=torch.float64, device=device, requires_grad=True)
    v = verts.clone().requires_grad_(True)
    out = render_mesh(v, f, K, RES, vertex_colors=colors, sh=default_sh(1, device=device, dtype=torch.float64),
                      backend="cpu")
    target = torch.zeros_like(out["rgb"])
    ((out["rgb"] - target) ** 2).sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    assert colors.grad.abs().sum() > 0
    # Silhouette gradients: moving the mesh sideways shifts its coverage
    # across a ramp of weights; autograd agrees with finite differences.
    ramp = torch.linspace(0.0, 1.0, RES[1], dtype=torch.float64, device=device).view(1, 1, -1, 1)

    def loss(x):
        return (render_mesh(x, f, K, RES, backend="cpu")["mask"] * ramp).sum()

    eps = 1e-7  # metres, ~2e-5 px: no pixel changes triangle
    d = torch.zeros_like(verts)
    d[..., 0] = eps
    fd = (loss(verts + d) - loss(verts - d)) / (2 * eps)
    x = verts.clone().requires_grad_(True)
    g = torch.autograd.grad(loss(x), x)[0][..., 0].sum()
    assert fd.item() > 10  # coverage moves towards heavier weights
    assert abs(g.item() - fd.item()) < 1e-4 * abs(fd.item())


def test_only_the_render_package_calls_the_primitives():
    """Outside handfit/render/ meshes are drawn through render/mesh.py (rasterize_mesh, shade,
    render_mesh, sample_texture, bake_uv), never with rasterize/interpolate/texture/antialias/camera_to_clip."""
    import ast
    from pathlib import Path

    import handfit

    primitives = {"rasterize", "interpolate", "texture", "antialias", "camera_to_clip"}
    root = Path(handfit.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        if path.parent.name == "render":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and "render" in (node.module or ""):
                found += [(path.name, a.name) for a in node.names if a.name in primitives]
            if isinstance(node, ast.Attribute) and node.attr in primitives and isinstance(node.value, ast.Name) \
                    and node.value.id == "R":
                found.append((path.name, f"R.{node.attr}"))
    assert not found, found


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("albedo", ["texture", "colors", "white"])
def test_shading_covered_pixels_only_matches_every_pixel(batch, albedo):
    """Our backend shades only the covered pixels (MeshBuffers.covered); the same buffers
    shaded at every pixel and composited with the coverage give the same images, and the
    same gradients up to the order of their sums."""
    from handfit.render import rasterize_mesh, shade

    verts, f, K, uv, uvf = scene("cpu", torch.float64, batch=batch)
    gen = torch.Generator().manual_seed(0)
    outs = []
    for covered in (True, False):
        v = verts.clone().requires_grad_(True)
        tex = torch.rand(batch, 8, 8, 3, generator=gen.manual_seed(1), dtype=torch.float64).requires_grad_(True)
        cols = torch.rand(verts.shape[1], 3, generator=gen.manual_seed(2), dtype=torch.float64)
        sh = default_sh(batch, dtype=torch.float64).requires_grad_(True)
        bg = torch.rand(batch, *RES, 3, generator=gen.manual_seed(3), dtype=torch.float64).requires_grad_(True)
        buf = rasterize_mesh(v, f, K, RES, uv=uv, uv_faces=uvf, vertex_colors=cols if albedo == "colors" else None,
                             backend="cpu")
        assert buf.covered is not None and buf.covered.normals.shape[0] == batch
        if not covered:
            buf.covered = None
        out = shade(buf, texture=tex if albedo == "texture" else None, sh=sh, background=bg)
        w = torch.rand(out["rgb"].shape, generator=gen.manual_seed(4), dtype=torch.float64)
        (out["rgb"] * w).sum().backward()
        hard = buf.cover.bool().expand(-1, -1, -1, 3)
        outs.append([out["rgb"].detach(), out["coverage"].detach(), out["albedo"].detach()[hard],
                     out["shading"].detach()[hard], v.grad, sh.grad, bg.grad]
                    + ([tex.grad] if albedo == "texture" else []))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    for a, b in zip(outs[0][2:], outs[1][2:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # Off the mesh the covered-pixel layers are zero, and layers=False leaves them out.
    off = ~buf.cover.bool()[..., 0]
    buf2 = rasterize_mesh(verts, f, K, RES, uv=uv, uv_faces=uvf, backend="cpu")
    full = shade(buf2, texture=torch.rand(1, 8, 8, 3, dtype=torch.float64), sh=default_sh(1, dtype=torch.float64))
    assert full["albedo"][off].abs().max() == 0 and full["shading"][off].abs().max() == 0
    slim = shade(buf2, sh=default_sh(1, dtype=torch.float64), layers=False)
    assert slim["albedo"] is None and slim["shading"] is None


@pytest.mark.parametrize("batch", [1, 2])
def test_shading_a_mesh_that_covers_no_pixel(batch):
    """A mesh entirely outside the image (a fit that drifted off its crop) shades to the
    background, with finite zero gradients, on the covered-pixel path too."""
    from handfit.render import rasterize_mesh, shade

    verts, f, K, uv, uvf = scene("cpu", batch=batch)
    v = (verts + torch.tensor([5.0, 0.0, 0.0])).requires_grad_(True)
    buf = rasterize_mesh(v, f, K, RES, uv=uv, uv_faces=uvf, backend="cpu")
    assert buf.covered.normals.shape == (batch, 0, 3)
    bg = torch.full((batch, *RES, 3), 0.3)
    out = shade(buf, texture=torch.rand(1, 8, 8, 3), sh=default_sh(batch), background=bg)
    assert torch.equal(out["rgb"], bg)
    out["rgb"].sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() == 0
