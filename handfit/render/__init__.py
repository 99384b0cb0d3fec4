"""Differentiable rasterization on two backends, with nvdiffrast's conventions.

Primitives (see :mod:`handfit.render.ops`)::

    rast = rasterize(pos, tri, (H, W))          # (B,H,W,4) u, v, z/w, id+1
    col  = interpolate(attr, rast, tri)         # (B,H,W,C)
    tex  = texture(texture_image, uv_image)     # (B,H,W,C) bilinear
    img  = antialias(col, rast, pos, tri)       # (B,H,W,C)

``backend="auto"`` runs nvdiffrast on CUDA tensors and our numba + torch
backend on CPU tensors; ``"cpu"`` / ``"nvdiffrast"`` force one.
:func:`camera_to_clip` is the only conversion from the OpenCV camera frame to
clip space.

Meshes are rendered in two steps, the backend chosen once::

    buf = rasterize_mesh(vertices, faces, K, (H, W), uv=uv, uv_faces=uv_faces)
    out = shade(buf, texture=tex, sh=sh, background=photo)   # out["rgb"], out["coverage"]

:func:`render_mesh` is both in one call; :func:`sample_texture` is shade's
texture lookup on a kept UV image and :func:`bake_uv` draws per-vertex values
into the UV atlas. Outside this package nothing calls the four primitives
directly (bench/ and tests/ aside). See docs/rendering.md.
"""

from .clip import camera_to_clip
from .mesh import MeshBuffers, bake_uv, rasterize_mesh, render_mesh, sample_texture, shade
from .ops import BACKENDS, antialias, interpolate, make_context, make_topology, pick_backend, rasterize, texture
from .shading import default_sh, lambert, sh_basis, sh_lights, sh_shading, vertex_normals

__all__ = [
    "BACKENDS", "pick_backend",
    "rasterize", "interpolate", "texture", "antialias",
    "make_context", "make_topology", "camera_to_clip", "MeshBuffers", "rasterize_mesh", "shade", "render_mesh",
    "sample_texture", "bake_uv",
    "vertex_normals", "sh_basis", "sh_shading", "sh_lights", "default_sh", "lambert",
]
