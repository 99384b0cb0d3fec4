"""A procedural closed mesh with UVs, for tests and benchmarks that must run
without a hand model."""

from __future__ import annotations

import math

import torch


def ellipsoid(radii=(0.09, 0.045, 0.025), rings: int = 41, segments: int = 40,
              dtype=torch.float32):
    """Closed UV-ellipsoid, hand-sized by default.

    With the defaults it has 1,602 vertices and 3,200 triangles, about the
    size of the Anny hand (1,609 / 3,196).

    Args:
        radii: semi-axes along x, y, z in metres.
        rings: latitude bands (>= 2); segments: longitude slices (>= 3).

    Returns:
        vertices (V,3), faces (F,3) int64 counter-clockwise seen from outside
        (right-handed frame), uv_coords (T,2) in [0,1]^2 and uv_faces (F,3)
        indices into uv_coords -- the layout of :class:`handfit.models.base.HandModel`.
        The UV grid duplicates the seam column so no triangle wraps around.
    """
    verts = [(0.0, 0.0, -1.0)]  # south pole, then rings bottom to top, then north pole
    for r in range(1, rings):
        theta = math.pi * r / rings
        for s in range(segments):
            phi = 2.0 * math.pi * s / segments
            verts.append((math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), -math.cos(theta)))
    verts.append((0.0, 0.0, 1.0))
    vertices = torch.tensor(verts, dtype=torch.float64) * torch.tensor(radii, dtype=torch.float64)
    north = len(verts) - 1

    def ring_vertex(r, s):  # r in 1..rings-1
        return 1 + (r - 1) * segments + s % segments

    def uv_index(r, s):  # grid (rings+1) x (segments+1)
        return r * (segments + 1) + s

    faces, uv_faces = [], []
    for s in range(segments):
        # Counter-clockwise seen from outside: with phi growing counter-clockwise
        # about +z, the outward order at the south pole is (pole, s+1, s).
        faces.append((0, ring_vertex(1, s + 1), ring_vertex(1, s)))
        uv_faces.append((uv_index(0, s), uv_index(1, s + 1), uv_index(1, s)))
        for r in range(1, rings - 1):
            a, b = ring_vertex(r, s), ring_vertex(r, s + 1)
            c, d = ring_vertex(r + 1, s), ring_vertex(r + 1, s + 1)
            faces += [(a, b, d), (a, d, c)]
            ua, ub = uv_index(r, s), uv_index(r, s + 1)
            uc, ud = uv_index(r + 1, s), uv_index(r + 1, s + 1)
            uv_faces += [(ua, ub, ud), (ua, ud, uc)]
        faces.append((north, ring_vertex(rings - 1, s), ring_vertex(rings - 1, s + 1)))
        uv_faces.append((uv_index(rings, s), uv_index(rings - 1, s), uv_index(rings - 1, s + 1)))
    uv = [(s / segments, r / rings) for r in range(rings + 1) for s in range(segments + 1)]
    return (vertices.to(dtype), torch.tensor(faces, dtype=torch.int64),
            torch.tensor(uv, dtype=dtype), torch.tensor(uv_faces, dtype=torch.int64))
