"""Vertex normals and diffuse lighting: second-order spherical harmonics and Lambert.

Normals and light directions live in the same frame as the vertices (the
OpenCV camera frame in handfit: x right, y down, z forward), so the camera
looks along +z and a surface facing it has normal (0, 0, -1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Real SH basis constants for bands 0..2 (order: Y00, Y1-1, Y10, Y11, Y2-2,
# Y2-1, Y20, Y21, Y22).
_C0 = 0.5 / math.sqrt(math.pi)
_C1 = math.sqrt(3.0 / (4.0 * math.pi))
_C2 = 0.5 * math.sqrt(15.0 / math.pi)
_C20 = 0.25 * math.sqrt(5.0 / math.pi)
_C22 = 0.25 * math.sqrt(15.0 / math.pi)

# Convolution with the clamped cosine divided by pi (Ramamoorthi & Hanrahan,
# 2001): A_l / pi = 1, 2/3, 1/4 for l = 0, 1, 2. Dividing by pi makes the
# output the radiance leaving a white Lambertian surface.
_BAND = (1.0, 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 0.25, 0.25, 0.25, 0.25, 0.25)

# Frontal light: towards the camera, which looks along +z.
FRONTAL = (0.0, 0.0, -1.0)


def batch_rows(index: torch.Tensor, nb: int, nv: int) -> torch.Tensor:
    """Rows of a (B*V,·) table flattened from (B,V,·) for ``index`` (K,) into each of the
    B tables -> (B*K,) int64, image-major. Along dim 0 of a 2-D tensor index_select and
    index_add are the fast kernels (along dim 1 they loop slice by slice), and both add
    in index order on any number of threads."""
    index = index.long()
    return (index[None] + (torch.arange(nb, device=index.device) * nv)[:, None]).reshape(-1)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    Args:
        vertices: (B,V,3) positions.
        faces: (F,3) vertex indices, counter-clockwise seen from outside in a
            right-handed frame (the OpenCV camera frame is right-handed).

    Returns:
        (B,V,3) unit outward normals (zero for vertices used by no face).
    """
    f = faces.to(vertices.device).long()
    nb, nv = vertices.shape[:2]
    # Rows of the flattened (B*V,3) table (batch_rows): index_select and index_add along
    # dim 0 of a 2-D tensor are the fast kernels, and index_select's backward adds in
    # index order (not vertices[:, f[:, k]]; see render.cpu.edge_planes).
    flat = vertices.reshape(nb * nv, 3)
    rows = [batch_rows(f[:, k], nb, nv) for k in range(3)]
    v0, v1, v2 = (flat.index_select(0, r).view(nb, -1, 3) for r in rows)
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1).reshape(-1, 3)  # length = 2 * area: area weighting
    n = torch.zeros_like(flat)
    for r in rows:
        n = n.index_add(0, r, fn)
    n = n.view(nb, nv, 3)
    return F.normalize(n, dim=-1, eps=1e-12)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(...,3) unit directions -> (...,9) real SH basis values, bands 0-2."""
    x, y, z = normals.unbind(-1)
    return torch.stack([
        torch.full_like(x, _C0),
        _C1 * y, _C1 * z, _C1 * x,
        _C2 * x * y, _C2 * y * z, _C20 * (3.0 * z * z - 1.0), _C2 * x * z, _C22 * (x * x - y * y),
    ], dim=-1)


def sh_shading(normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Diffuse shading from second-order spherical-harmonic lighting.

    Args:
        normals: (B,...,3) unit normals, e.g. (B,H,W,3) per pixel or (B,V,3).
        sh: (B,9,3) or (9,3) SH coefficients of the incoming radiance, 9 per
            colour channel, in the order of :func:`sh_basis`.

    Returns:
        (B,...,3) radiance leaving a white Lambertian surface: multiply by the
        albedo. A uniform light with ``sh[0] = a * 2 sqrt(pi)`` gives ``a``
        everywhere; see :func:`sh_lights` to build coefficients from lights.
    """
    # Bands 0-2 are the polynomials of degree <= 2 in (x, y, z), so the shading is a
    # quadratic form n_h^T M_c n_h of n_h = (x, y, z, 1), with M (·,3,4,4) linear in
    # the coefficients: per pixel one small product instead of nine basis images
    # (this runs on every pixel of every fitting iteration).
    sh = sh.to(normals.dtype)
    M = (sh.transpose(-1, -2) @ sh.new_tensor(_QUADRATIC)).unflatten(-1, (4, 4))  # (·,3,4,4)
    lead = normals.shape[:-1]
    nb = 1 if sh.dim() == 2 else sh.shape[0]
    n = normals.reshape(nb, -1, 3)                                              # (B,P,3)
    n_h = torch.cat([n, torch.ones_like(n[..., :1])], -1)                        # (B,P,4)
    Mcat = M.reshape(nb, 3, 4, 4).permute(0, 2, 1, 3).reshape(nb, 4, 12)        # [b, i, c*4+j]
    y = (n_h @ Mcat).view(nb, -1, 3, 4)                                          # (B,P,3,4)
    return (y * n_h[:, :, None, :]).sum(-1).reshape(*lead, 3)


def _quadratic_map() -> tuple:
    """(9,16): the SH coefficient of each basis function (band factor included) ->
    its share of the symmetric 4x4 matrix M of :func:`sh_shading`, row-major."""
    out = [[0.0] * 16 for _ in range(9)]

    def put(k, i, j, v):  # k's basis function contains v * n_h[i] * n_h[j]
        if i == j:
            out[k][i * 4 + j] += v
        else:
            out[k][i * 4 + j] += v / 2
            out[k][j * 4 + i] += v / 2

    x, y, z, one = 0, 1, 2, 3
    b = _BAND
    put(0, one, one, b[0] * _C0)
    put(1, y, one, b[1] * _C1)
    put(2, z, one, b[2] * _C1)
    put(3, x, one, b[3] * _C1)
    put(4, x, y, b[4] * _C2)
    put(5, y, z, b[5] * _C2)
    put(6, z, z, b[6] * 3 * _C20)
    put(6, one, one, -b[6] * _C20)
    put(7, x, z, b[7] * _C2)
    put(8, x, x, b[8] * _C22)
    put(8, y, y, -b[8] * _C22)
    return tuple(tuple(r) for r in out)


_QUADRATIC = _quadratic_map()


def sh_lights(ambient=0.6, directions=(FRONTAL,), intensities=(0.4,), batch_size: int = 1,
              device=None, dtype=torch.float32) -> torch.Tensor:
    """SH coefficients (B,9,3) for an ambient term plus distant lights.

    Args:
        ambient: float or 3 RGB values; uniform light, shading ``ambient``
            in every direction.
        directions: directions *towards* each light (normalised here).
        intensities: per light, a float or 3 RGB values: a surface facing the
            light gets about ``intensity`` more (the 9-term SH fit of the
            clamped cosine is 1.06 at normal incidence, ~0.09 at 90 degrees).

    Returns:
        (batch_size,9,3) coefficients for :func:`sh_shading`.
    """
    sh = torch.zeros(9, 3, dtype=torch.float64)
    sh[0] = torch.as_tensor(ambient, dtype=torch.float64) / _C0
    for d, i in zip(directions, intensities):
        d = F.normalize(torch.as_tensor(d, dtype=torch.float64), dim=0)
        # A distant light of irradiance pi*i has radiance coefficients pi*i*Y(d).
        sh += math.pi * sh_basis(d)[:, None] * torch.as_tensor(i, dtype=torch.float64)
    return sh.to(device=device, dtype=dtype).expand(batch_size, 9, 3).clone()


def default_sh(batch_size: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """The default lighting (B,9,3): ambient 0.6 plus a white light of 0.4 from
    the camera, so a camera-facing white surface shades to ~1.0, a grazing one
    to ~0.64 and a back-facing one to ~0.63."""
    return sh_lights(0.6, (FRONTAL,), (0.4,), batch_size, device, dtype)


def lambert(normals: torch.Tensor, light_dir, ambient=0.5, diffuse=0.5) -> torch.Tensor:
    """Plain Lambert shading ``ambient + diffuse * max(n . l, 0)``.

    Args:
        normals: (B,...,3) unit normals.
        light_dir: direction *towards* the light (normalised here): (3,), or
            (B,3) for one light per batch item, or anything broadcastable to
            ``normals``.
        ambient, diffuse: floats, or tensors broadcastable to (B,...,C) for
            coloured light (e.g. (3,) for RGB).

    Returns:
        (B,...,1) for scalar ambient/diffuse, else broadcast to (B,...,C).
    """
    light = torch.as_tensor(light_dir, dtype=normals.dtype, device=normals.device)
    if light.dim() == 2 and normals.dim() > 2:
        light = light.view(light.shape[0], *([1] * (normals.dim() - 2)), 3)
    light = F.normalize(light, dim=-1)
    cos = (normals * light).sum(-1, keepdim=True).clamp(min=0.0)
    return ambient + diffuse * cos
