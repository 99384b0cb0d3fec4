"""One-call rendering of a (textured) mesh seen by a pinhole camera."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .clip import camera_to_clip
from .ops import antialias as _antialias
from .ops import interpolate, rasterize, texture as _texture
from .shading import sh_shading, vertex_normals


def _corner_uvs(uv: torch.Tensor, uv_faces, nfaces: int):
    """Face-corner UVs as an attribute table plus its own triangle index.

    Returns attr (T,2) or (B,T,2) and tri_uv (F,3) indexing it: either the
    given ``uv_faces``, or, for (F,3,2)/(B,F,3,2) corner UVs, a table of F*3
    rows with tri_uv = arange(F*3).view(F,3).
    """
    if uv_faces is not None:
        return uv, uv_faces
    attr = uv.reshape(*uv.shape[:-3], nfaces * 3, 2)
    return attr, torch.arange(nfaces * 3, device=uv.device).view(nfaces, 3)


def render_mesh(vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, resolution,
                uv: torch.Tensor = None, uv_faces: torch.Tensor = None, texture: torch.Tensor = None,
                vertex_colors: torch.Tensor = None, sh: torch.Tensor = None,
                background: torch.Tensor = None, antialias: bool = True, near: float = 0.01,
                far: float = 10.0, boundary_mode: str = "clamp", backend: str = "auto") -> dict:
    """Render meshes in the OpenCV camera frame.

    Args:
        vertices: (B,V,3) camera-frame positions in metres.
        faces: (F,3) vertex indices (counter-clockwise seen from outside).
        K: (B,3,3) or (3,3) intrinsics in pixels of an image of ``resolution``.
        resolution: (H,W).
        uv: texture coordinates, either per face corner, (F,3,2) or (B,F,3,2),
            or a UV table (T,2)/(B,T,2) indexed by ``uv_faces`` (F,3) -- the
            HandModel layout (``uv_coords``, ``uv_faces``). Face-corner UVs
            are interpolated with their own triangle index into a table of
            F*3 corners, so UV seams need no vertex duplication (which would
            break antialiasing's silhouette detection).
        texture: (B,Ht,Wt,3) or (1,Ht,Wt,3) albedo texture, sampled bilinearly
            with ``boundary_mode``; needs ``uv``.
        vertex_colors: (B,V,3) or (V,3) albedo per vertex, used when no
            texture is given. Without either the albedo is white.
        sh: (B,9,3) or (9,3) SH lighting for :func:`sh_shading`
            (e.g. :func:`default_sh`); None renders unlit albedo.
        background: (B,H,W,3) or broadcastable image behind the mesh; zeros if None.
        antialias: blend silhouette edges (differentiable w.r.t. vertices).
        near, far: depth range in metres (see :func:`camera_to_clip`).
        backend: "auto" | "cpu" | "nvdiffrast".

    Returns:
        dict with
          rgb (B,H,W,3): shaded, composited over ``background``, antialiased;
          mask (B,H,W,1): coverage, antialiased (fractional along silhouettes);
          rast (B,H,W,4): :func:`rasterize` output; pos (B,V,4): clip positions;
          normals (B,H,W,3): unit camera-frame normals (zero on background);
          depth (B,H,W,1): camera z in metres (zero on background);
          albedo (B,H,W,3): before shading; uv (B,H,W,2) when ``uv`` is given.
    """
    nf = faces.shape[0]
    pos = camera_to_clip(vertices, K, resolution, near, far)
    rast = rasterize(pos, faces, resolution, backend=backend)
    covered = (rast[..., 3:] > 0).to(vertices.dtype)

    # One interpolate for everything indexed by the vertex triangles.
    normals = vertex_normals(vertices, faces)
    attrs = [normals, vertices[..., 2:]]
    if texture is None and vertex_colors is not None:
        colors = vertex_colors if vertex_colors.dim() == 3 else vertex_colors[None]
        attrs.append(colors.to(vertices.dtype).expand(vertices.shape[0], -1, -1))
    img = interpolate(torch.cat(attrs, dim=-1), rast, faces, backend=backend)
    n_img = F.normalize(img[..., 0:3], dim=-1, eps=1e-12)
    out = {"rast": rast, "pos": pos, "normals": n_img, "depth": img[..., 3:4]}

    if texture is not None:
        if uv is None:
            raise ValueError("render_mesh: a texture needs uv")
        attr, tri_uv = _corner_uvs(uv, uv_faces, nf)
        uv_img = interpolate(attr, rast, tri_uv, backend=backend)
        albedo = _texture(texture, uv_img, boundary_mode=boundary_mode, backend=backend)
        out["uv"] = uv_img
    elif vertex_colors is not None:
        albedo = img[..., 4:7]
    else:
        albedo = covered.expand(*covered.shape[:-1], 3)
    out["albedo"] = albedo

    rgb = albedo * sh_shading(n_img, sh) if sh is not None else albedo
    rgb = rgb * covered
    if background is not None:
        rgb = rgb + background * (1.0 - covered)
    if antialias:
        both = _antialias(torch.cat([rgb, covered], dim=-1), rast, pos, faces, backend=backend)
        rgb, covered = both[..., :3], both[..., 3:]
    out["rgb"] = rgb
    out["mask"] = covered
    return out
