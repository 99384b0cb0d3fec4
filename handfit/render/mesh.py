"""Meshes seen by a pinhole camera, in two steps: rasterize to buffers, then shade them.

:func:`rasterize_mesh` runs the geometry once -- camera-to-clip, rasterize,
one interpolate of normals (and positions, UVs, vertex colours) -- and
returns :class:`MeshBuffers`, which remember the backend chosen for them.
:func:`shade` colours those buffers (texture, SH light, composite over a
background, antialias) as often as needed; an optimisation over texture and
light with a fixed mesh rasterizes once. On our CPU backend the buffers also
keep the covered pixels' values (:class:`CoveredPixels`), and :func:`shade` colours
only those: a hand fills about a fifth of its crop. :func:`render_mesh` is both in one
call. Every mesh render in handfit (the dense fit, synthetic scenes, the
overlay, the texture prior's training) goes through these functions, so a
change of shading or UV conventions is one edit here: besides the three,
:func:`sample_texture` is shade's texture lookup for UV images kept from an
earlier :func:`rasterize_mesh`, and :func:`bake_uv` draws per-vertex values
into the mesh's UV atlas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .clip import camera_to_clip
from .ops import antialias as _antialias
from .ops import interpolate, make_topology, pick_backend, rasterize
from .ops import texture as _texture
from .shading import sh_shading, vertex_normals


@dataclass
class MeshBuffers:
    """What :func:`rasterize_mesh` found; images are (B,H,W,·), zero on background."""

    rast: torch.Tensor            # (B,H,W,4) :func:`rasterize` output
    clip: torch.Tensor            # (B,V,4) clip-space positions
    faces: torch.Tensor           # (F,3) int32
    backend: str                  # resolved: "cpu" | "nvdiffrast"; shade() uses the same
    cover: torch.Tensor           # (B,H,W,1) 1 where a triangle is visible
    normals: torch.Tensor         # (B,H,W,3) unit camera-frame normals
    points: torch.Tensor | None   # (B,H,W,3) camera-frame positions (metres), if asked for
    uv: torch.Tensor | None       # (B,H,W,2) texture coordinates, if UVs were given
    colors: torch.Tensor | None   # (B,H,W,3) interpolated vertex colours, if given
    visibility: object = None     # the backend's visibility state for ``rast`` (see rasterize)
    topology: object = None       # antialiasing topology of ``faces`` (see make_topology)
    covered: "CoveredPixels | None" = None  # the covered pixels' values (our CPU backend), for shade()


@dataclass
class CoveredPixels:
    """The covered pixels of :class:`MeshBuffers`, so that :func:`shade` colours only
    those (our CPU backend knows them; a hand fills about a fifth of its crop).

    Image b's covered pixels, in raster order, are rows ``0..count_b-1`` of its
    block of M rows, M the largest count; the other rows are zero padding."""

    pix: torch.Tensor                  # (N,) flat indices into B*H*W, in raster order
    slot: torch.Tensor | None          # (N,) their rows in the (B*M) layout; None when B == 1 (then M == N)
    nb: int                            # B
    m: int                             # M
    normals: torch.Tensor = None       # (B,M,3) unit camera-frame normals
    uv: torch.Tensor | None = None     # (B,M,2) texture coordinates
    colors: torch.Tensor | None = None  # (B,M,3) interpolated vertex colours

    @classmethod
    def of(cls, pix, batch, nb: int, normals, uv=None, colors=None) -> "CoveredPixels":
        """From the (N,·) values of pixels ``pix`` (N,) of images ``batch`` (N,), of ``nb`` images."""
        n = pix.shape[0]
        slot, m = None, n
        if nb > 1:
            counts = torch.bincount(batch, minlength=nb)
            starts = torch.cumsum(counts, 0) - counts
            m = int(counts.max()) if n else 0
            slot = batch * m + torch.arange(n, device=batch.device) - starts[batch]
        out = cls(pix, slot, nb, m)
        out.normals, out.uv, out.colors = out.pad(normals), out.pad(uv), out.pad(colors)
        return out

    def pad(self, x):
        """(N,C) -> (B,M,C); None stays None."""
        if x is None or self.slot is None:
            return None if x is None else x[None]
        c = x.shape[-1]
        return x.new_zeros(self.nb * self.m, c).index_copy(0, self.slot, x).view(self.nb, self.m, c)

    def place(self, x, base):
        """(B,M,C) values written over ``base`` (B,H,W,C) at the covered pixels, out of place."""
        flat = x.reshape(-1, x.shape[-1])
        if self.slot is not None:
            flat = flat.index_select(0, self.slot)
        return base.reshape(-1, base.shape[-1]).index_copy(0, self.pix, flat).view(base.shape)


def _corner_uvs(uv: torch.Tensor, uv_faces, nfaces: int):
    """Face-corner UVs as an attribute table plus its own triangle index.

    Returns attr (T,2) or (B,T,2) and tri_uv (F,3) indexing it: either the
    given ``uv_faces``, or, for (F,3,2)/(B,F,3,2) corner UVs, a table of F*3
    rows with tri_uv = arange(F*3).view(F,3).
    """
    if uv_faces is not None:
        return uv, uv_faces
    attr = uv.reshape(*uv.shape[:-3], nfaces * 3, 2)
    return attr, torch.arange(nfaces * 3, device=uv.device, dtype=torch.int32).view(nfaces, 3)


def rasterize_mesh(vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, resolution,
                   uv: torch.Tensor = None, uv_faces: torch.Tensor = None, vertex_colors: torch.Tensor = None,
                   points: bool = False, near: float = 0.01, far: float = 10.0, backend: str = "auto",
                   topology=None, context=None) -> MeshBuffers:
    """Rasterize meshes in the OpenCV camera frame into :class:`MeshBuffers`.

    Args:
        vertices: (B,V,3) camera-frame positions in metres.
        faces: (F,3) vertex indices (counter-clockwise seen from outside).
        K: (B,3,3) or (3,3) intrinsics in pixels of an image of ``resolution``.
        resolution: (H,W).
        uv: texture coordinates, either a table (T,2)/(B,T,2) indexed by
            ``uv_faces`` (F,3) -- the HandModel layout -- or per face corner,
            (F,3,2)/(B,F,3,2). Face-corner UVs get their own triangle index, so
            UV seams need no vertex duplication (which would break
            antialiasing's silhouette detection).
        vertex_colors: (B,V,3) or (V,3) albedo per vertex, or None.
        points: also interpolate camera-frame positions (``points``).
        near, far: depth range in metres (see :func:`camera_to_clip`).
        backend: "auto" | "cpu" | "nvdiffrast", resolved here once for
            every later :func:`shade` of these buffers.
        topology: :func:`make_topology` of ``faces`` for that backend, if the
            caller keeps one per mesh; else built when shading antialiases.
        context: :func:`make_context` for that backend and device (None on the CPU).
    """
    backend = pick_backend(backend, vertices)
    faces = faces.to(device=vertices.device, dtype=torch.int32)
    clip = camera_to_clip(vertices, K, resolution, near, far)
    rast, vis = rasterize(clip, faces, resolution, backend=backend, return_visibility=True, context=context)

    # One interpolate for everything indexed by the vertex triangles.
    attrs = [vertex_normals(vertices, faces.long())]
    if points:
        attrs.append(vertices)
    if vertex_colors is not None:
        colors = vertex_colors if vertex_colors.dim() == 3 else vertex_colors[None]
        attrs.append(colors.to(vertices.dtype).expand(vertices.shape[0], -1, -1))
    attr = torch.cat(attrs, dim=-1)
    uv_attr = _corner_uvs(uv, uv_faces, faces.shape[0]) if uv is not None else None
    covered, uv_img = None, None
    if backend == "cpu":
        # Our backend knows which pixels are covered: interpolate there, keep those
        # values for shade(), and make the images from them.
        from . import cpu

        vals = cpu.interpolate_covered(attr, faces, vis)                              # (N,C)
        vals = torch.cat([F.normalize(vals[:, 0:3], dim=-1, eps=1e-12), vals[:, 3:]], -1)
        img = cpu.scatter_covered(vals, vis.pix, rast.shape[:3])
        normals = img[..., 0:3]
        uv_vals = None
        if uv_attr is not None:
            uv_vals = cpu.interpolate_covered(uv_attr[0].to(vertices.dtype), uv_attr[1].to(faces.device), vis)
            uv_img = cpu.scatter_covered(uv_vals, vis.pix, rast.shape[:3])
        covered = CoveredPixels.of(vis.pix, vis.batch, rast.shape[0], vals[:, 0:3], uv_vals,
                                   vals[:, -3:] if vertex_colors is not None else None)
    else:
        img = interpolate(attr, rast, faces, backend=backend, visibility=vis)
        normals = F.normalize(img[..., 0:3], dim=-1, eps=1e-12)
        if uv_attr is not None:
            uv_img = interpolate(uv_attr[0].to(vertices.dtype), rast,
                                 uv_attr[1].to(device=vertices.device, dtype=torch.int32),
                                 backend=backend, visibility=vis)
    pts = img[..., 3:6] if points else None
    col = img[..., -3:] if vertex_colors is not None else None
    cover = (rast[..., 3:] > 0).to(vertices.dtype)
    return MeshBuffers(rast=rast, clip=clip, faces=faces, backend=backend, cover=cover, normals=normals,
                       points=pts, uv=uv_img, colors=col, visibility=vis, topology=topology, covered=covered)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor, boundary_mode: str = "clamp",
                   backend: str = "auto") -> torch.Tensor:
    """The albedo :func:`shade` reads off a texture: (B,Ht,Wt,C) or (1,Ht,Wt,C)
    sampled bilinearly at the UV image ``uv`` (B,H,W,2), e.g. ``MeshBuffers.uv``
    kept from an earlier :func:`rasterize_mesh` (the texture prior's training
    views store only that). -> (B,H,W,C), differentiable w.r.t. the texture."""
    return _texture(texture, uv, boundary_mode=boundary_mode, backend=backend)


def bake_uv(values: torch.Tensor, faces: torch.Tensor, uv: torch.Tensor, uv_faces: torch.Tensor, size: int,
            backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vertex values drawn into the mesh's UV atlas (texture space, not a camera).

    The atlas's triangles (``uv_faces`` (F,3) into the UV table ``uv`` (T,2))
    are rasterized at ``size``×``size``, with texel (i, j) at uv
    ((j+0.5)/size, (i+0.5)/size) as :func:`sample_texture` reads it (row 0 at
    v = 0), and ``values`` (B,V,C) or (V,C), indexed by the mesh's ``faces``
    (F,3), are interpolated over them.
    -> (maps (B,size,size,C), zero outside the charts; coverage (B,size,size,1), 1 inside them)
    """
    uv = uv.to(values.dtype)
    clip = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], -1)[None]
    rast = rasterize(clip, uv_faces.to(torch.int32), (size, size), backend=backend)
    maps = interpolate(values if values.dim() == 3 else values[None], rast, faces.to(torch.int32), backend=backend)
    return maps, (rast[..., 3:] > 0).to(values.dtype)


def shade(buf: MeshBuffers, texture: torch.Tensor = None, sh: torch.Tensor = None,
          background: torch.Tensor = None, antialias: bool = True, clamp: bool = False,
          boundary_mode: str = "clamp", layers: bool = True) -> dict:
    """Colour :class:`MeshBuffers` on the backend they were rasterized with.

    Args:
        buf: from :func:`rasterize_mesh`.
        texture: (B,Ht,Wt,3) or (1,Ht,Wt,3) albedo, sampled bilinearly at
            ``buf.uv`` with ``boundary_mode``. Without it the albedo is the
            vertex colours, else white.
        sh: (B,9,3) or (9,3) SH lighting for :func:`sh_shading`; None is unlit.
        background: (B,H,W,3) or broadcastable image behind the mesh; zeros if None.
        antialias: blend silhouette edges (differentiable w.r.t. the vertices).
        clamp: clip the shaded colour to [0,1] before compositing, as a camera would.
        layers: also return the albedo and shading images (False: None for both,
            which spares a fitting loop two images per call).

    Returns:
        dict with rgb (B,H,W,3) composited; coverage (B,H,W,1) (fractional
        along silhouettes when antialiased); albedo (B,H,W,3); shading
        (B,H,W,3) or None.
    """
    if texture is not None and buf.uv is None:
        raise ValueError("shade: a texture needs buffers rasterized with uv")
    if buf.covered is not None:
        rgb, albedo, shading = _shade_covered(buf, texture, sh, background, clamp, boundary_mode, layers)
        cover = buf.cover
    else:
        if texture is not None:
            albedo = sample_texture(texture, buf.uv, boundary_mode=boundary_mode, backend=buf.backend)
        elif buf.colors is not None:
            albedo = buf.colors
        else:
            albedo = buf.cover.expand(*buf.cover.shape[:-1], 3)
        shading = sh_shading(buf.normals, sh) if sh is not None else None
        rgb = albedo * shading if shading is not None else albedo
        if clamp:
            rgb = rgb.clamp(0, 1)
        cover = buf.cover
        rgb = rgb * cover
        if background is not None:
            rgb = rgb + background * (1.0 - cover)
        if not layers:
            albedo = shading = None
    if antialias:
        if buf.topology is None:
            buf.topology = make_topology(buf.faces, buf.backend)
        both = _antialias(torch.cat([rgb, cover], dim=-1), buf.rast, buf.clip, buf.faces, backend=buf.backend,
                          topology=buf.topology, visibility=buf.visibility)
        rgb, cover = both[..., :3], both[..., 3:]
    return {"rgb": rgb, "coverage": cover, "albedo": albedo, "shading": shading}


def _shade_covered(buf: MeshBuffers, texture, sh, background, clamp: bool, boundary_mode: str, layers: bool):
    """:func:`shade`'s colours computed at the covered pixels only (``buf.covered``),
    then placed over the background: the same values as shading every pixel and
    compositing with the coverage. -> rgb, albedo, shading (B,H,W,3); albedo and
    shading are zero off the mesh, shading None without ``sh``, both None without ``layers``."""
    px = buf.covered
    if texture is not None:
        alb = sample_texture(texture, px.uv[:, None], boundary_mode=boundary_mode, backend=buf.backend)[:, 0]
    elif px.colors is not None:
        alb = px.colors
    else:
        alb = torch.ones_like(px.normals)
    shd = sh_shading(px.normals, sh) if sh is not None else None
    rgb = alb * shd if shd is not None else alb
    if clamp:
        rgb = rgb.clamp(0, 1)
    shape = (*buf.cover.shape[:-1], 3)
    base = rgb.new_zeros(shape) if background is None else background.to(rgb.dtype).expand(shape)
    if not layers:
        return px.place(rgb, base), None, None
    return (px.place(rgb, base), px.place(alb, rgb.new_zeros(shape)),
            None if shd is None else px.place(shd, rgb.new_zeros(shape)))


def render_mesh(vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, resolution,
                uv: torch.Tensor = None, uv_faces: torch.Tensor = None, texture: torch.Tensor = None,
                vertex_colors: torch.Tensor = None, sh: torch.Tensor = None,
                background: torch.Tensor = None, antialias: bool = True, near: float = 0.01,
                far: float = 10.0, boundary_mode: str = "clamp", backend: str = "auto", context=None) -> dict:
    """:func:`rasterize_mesh` then :func:`shade`, in one call (arguments as there).

    Returns:
        dict with
          rgb (B,H,W,3): shaded, composited over ``background``, antialiased;
          mask (B,H,W,1): coverage, antialiased (fractional along silhouettes);
          rast (B,H,W,4): :func:`rasterize` output; pos (B,V,4): clip positions;
          normals (B,H,W,3): unit camera-frame normals (zero on background);
          depth (B,H,W,1): camera z in metres (zero on background);
          albedo (B,H,W,3): before shading; uv (B,H,W,2) when ``uv`` is given.
    """
    if texture is not None and uv is None:
        raise ValueError("render_mesh: a texture needs uv")
    buf = rasterize_mesh(vertices, faces, K, resolution, uv=uv, uv_faces=uv_faces,
                         vertex_colors=vertex_colors if texture is None else None, points=True,
                         near=near, far=far, backend=backend, context=context)
    out = shade(buf, texture=texture, sh=sh, background=background, antialias=antialias,
                boundary_mode=boundary_mode)
    res = {"rast": buf.rast, "pos": buf.clip, "normals": buf.normals, "depth": buf.points[..., 2:3],
           "albedo": out["albedo"], "rgb": out["rgb"], "mask": out["coverage"]}
    if buf.uv is not None:
        res["uv"] = buf.uv
    return res
