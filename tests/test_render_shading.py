"""vertex_normals, spherical-harmonic and Lambert shading."""

from __future__ import annotations

import math

import torch

from handfit.render import default_sh, lambert, sh_lights, sh_shading, vertex_normals
from handfit.train.shapes import ellipsoid


def test_ellipsoid_is_closed_and_outward(dtype):
    v, f, uv, uvf = ellipsoid(dtype=dtype)
    assert v.shape == (1602, 3) and f.shape == (3200, 3) and uvf.shape == f.shape
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    volume = (a * torch.cross(b, c, dim=-1)).sum() / 6  # > 0 for outward winding
    assert abs(volume.item() - 4 / 3 * math.pi * 0.09 * 0.045 * 0.025) < 0.02 * volume.item()
    assert uv.min() >= 0 and uv.max() <= 1


def test_vertex_normals_point_outward_and_are_unit(device, dtype):
    v, f, _, _ = ellipsoid(radii=(0.05, 0.05, 0.05), rings=12, segments=16, dtype=dtype)
    verts = torch.stack([v, 2 * v]).to(device)  # batch of two sizes
    n = vertex_normals(verts, f.to(device))
    assert n.shape == verts.shape
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(2, v.shape[0], dtype=dtype, device=device))
    radial = torch.nn.functional.normalize(verts, dim=-1)
    assert (n * radial).sum(-1).min() > 0.98  # sphere: normal = radial direction
    # Reversed winding flips them.
    n_rev = vertex_normals(verts, f.flip(1).to(device))
    torch.testing.assert_close(n_rev, -n)


def test_sh_uniform_light_is_constant(dtype):
    sh = sh_lights(ambient=(0.2, 0.5, 0.7), directions=(), intensities=(), batch_size=2, dtype=dtype)
    n = torch.nn.functional.normalize(torch.randn(2, 50, 3, dtype=dtype), dim=-1)
    out = sh_shading(n, sh)
    torch.testing.assert_close(out, torch.tensor([0.2, 0.5, 0.7], dtype=dtype).expand(2, 50, 3))


def test_sh_directional_light_approximates_lambert(dtype):
    d = torch.tensor([0.3, -0.5, -0.8], dtype=dtype)
    sh = sh_lights(ambient=0.0, directions=(d,), intensities=(1.0,), dtype=dtype)
    n = torch.nn.functional.normalize(torch.randn(1, 400, 3, generator=torch.Generator().manual_seed(0),
                                                  dtype=dtype), dim=-1)
    out = sh_shading(n, sh)[..., 0]
    ref = lambert(n, d, ambient=0.0, diffuse=1.0)[..., 0]
    # The 9-term SH fit of the clamped cosine is within ~0.1 everywhere.
    assert (out - ref).abs().max() < 0.11
    assert torch.corrcoef(torch.stack([out[0], ref[0]]))[0, 1] > 0.99


def test_default_sh_lights_the_camera_facing_side(device, dtype):
    sh = default_sh(3, device=device, dtype=dtype)
    assert sh.shape == (3, 9, 3)
    n = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    out = sh_shading(n[None].expand(3, -1, -1), sh)  # (B,3 normals,3 rgb)
    torch.testing.assert_close(out[:, 0], torch.full((3, 3), 1.025, dtype=dtype, device=device))
    assert (out[:, 1] < 0.65).all() and (out[:, 2] < out[:, 1]).all()
    # Per-pixel normals (B,H,W,3) and one shared (9,3) SH work too.
    img = sh_shading(n[None, None].expand(3, 4, -1, -1), sh[0])
    assert img.shape == (3, 4, 3, 3)


def test_lambert_values_and_batched_lights(device):
    n = torch.tensor([[[[0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]]], device=device).expand(2, 1, 2, 3)
    out = lambert(n, torch.tensor([[0.0, 0.0, -2.0], [1.0, 0.0, 0.0]], device=device), ambient=0.1, diffuse=0.8)
    assert out.shape == (2, 1, 2, 1)
    torch.testing.assert_close(out[:, 0, :, 0], torch.tensor([[0.9, 0.1], [0.1, 0.9]], device=device))
    rgb = lambert(n, (0.0, 0.0, -1.0), ambient=torch.tensor([0.1, 0.2, 0.3], device=device), diffuse=0.5)
    assert rgb.shape == (2, 1, 2, 3)


def test_sh_shading_is_the_band_weighted_basis_sum(device, dtype):
    """sh_shading evaluates the SH sum as a quadratic form; it must equal the
    definition sum_k band_k Y_k(n) sh[k] for batched and shared light."""
    from handfit.render import sh_basis
    from handfit.render.shading import _BAND

    g = torch.Generator().manual_seed(3)
    n = torch.nn.functional.normalize(torch.randn(2, 5, 7, 3, generator=g, dtype=dtype), dim=-1).to(device)
    sh = torch.randn(2, 9, 3, generator=g, dtype=dtype).to(device)
    y = sh_basis(n) * n.new_tensor(_BAND)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=0)
    torch.testing.assert_close(sh_shading(n, sh), torch.einsum("bhwk,bkc->bhwc", y, sh), **tol)
    torch.testing.assert_close(sh_shading(n, sh[0]), torch.einsum("bhwk,kc->bhwc", y, sh[0]), **tol)


def test_sh_shading_gradcheck():
    g = torch.Generator().manual_seed(4)
    n = torch.nn.functional.normalize(torch.randn(2, 4, 3, generator=g, dtype=torch.float64), dim=-1)
    sh = torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(sh_shading, (n.requires_grad_(), sh.requires_grad_()))
