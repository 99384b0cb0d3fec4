"""Our backend: nvdiffrast's four ops in numba + torch.

Each op splits into a discrete part without gradients (numba, in
:mod:`handfit.render.zbuffer`: which triangle covers a pixel, which silhouette
edge crosses between two pixels) and a differentiable part in torch that only
touches the pixels the discrete part selected. The torch part runs on the
inputs' device and dtype; the numba part always runs on the CPU in float64.

Gradients follow nvdiffrast: the barycentrics (u, v) of ``rasterize`` reach the
vertex positions, the z/w channel carries none, and ``antialias`` moves
gradients to the vertices of the silhouette edges it blends across.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .shading import batch_rows


def _numpy_pos(pos: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(pos.detach().to("cpu", torch.float64).numpy())


def _numpy_tri(tri: torch.Tensor, num_vertices: int = None) -> np.ndarray:
    out = np.ascontiguousarray(tri.detach().to("cpu", torch.int64).numpy())
    # The numba kernels do not bounds-check: refuse bad indices here.
    if num_vertices is not None and out.size and (out.min() < 0 or out.max() >= num_vertices):
        raise ValueError(f"triangle indices must lie in [0, {num_vertices}), got [{out.min()}, {out.max()}]")
    return out


def _pixel_centres(pix: torch.Tensor, height: int, width: int, dtype):
    """Flat pixel indices (into B*H*W) -> batch index, x and y pixel indices."""
    hw = height * width
    b = torch.div(pix, hw, rounding_mode="floor")
    rem = pix - b * hw
    y = torch.div(rem, width, rounding_mode="floor")
    x = rem - y * width
    return b, x.to(dtype), y.to(dtype)


@dataclass
class Visibility:
    """What the CPU :func:`rasterize` found, for :func:`interpolate` and
    :func:`antialias` to reuse instead of rescanning the image.

    Returned beside ``rast`` by ``rasterize(..., return_visibility=True)`` and
    passed back by the caller, like nvdiffrast's topology hash: nothing is
    hung on tensors. It belongs to that very ``rast`` tensor, unmodified;
    :meth:`check` refuses any other.
    """

    rast: torch.Tensor      # (B,H,W,4) the rasterizer output this describes
    version: int            # rast._version when made
    pix: torch.Tensor       # (N,) flat indices (into B*H*W) of covered pixels
    face: torch.Tensor      # (N,) int64 triangle index per covered pixel
    batch: torch.Tensor     # (N,) int64 batch index per covered pixel
    bary: torch.Tensor      # (N,2) differentiable (u, v) of those pixels
    ids: np.ndarray         # (B,H,W) int32, -1 = background
    depth: np.ndarray       # (B,H,W) float64 z/w

    def check(self, rast: torch.Tensor) -> "Visibility":
        if rast is not self.rast or rast._version != self.version:
            raise ValueError("this Visibility was made for another (or a since modified) rast tensor")
        return self


@dataclass
class Topology:
    """Antialiasing topology of a triangle list (nvdiffrast's topology hash):
    for each triangle edge, the vertex opposite it in the neighbouring
    triangle. Build it once per mesh with :func:`make_topology` and pass it to
    :func:`antialias`. opposite: (F,3) int64, -1 on open edges."""

    opposite: np.ndarray


def make_topology(tri: torch.Tensor) -> Topology:
    """(F,3) triangles -> their :class:`Topology`."""
    from . import zbuffer

    return Topology(zbuffer.opposite_vertices(_numpy_tri(tri)))


class _PlaceUV(torch.autograd.Function):
    """Write the covered pixels' (u, v) into a freshly made rast image whose
    other channels are already filled; backward reads them back. Avoids
    zero-filling, copying and concatenating full images."""

    @staticmethod
    def forward(ctx, bary, pix, base):
        ctx.save_for_backward(pix)
        ctx.mark_dirty(base)
        flat = base.view(-1, 4)
        flat[pix, 0:2] = bary.detach().to(base.dtype)
        return base

    @staticmethod
    def backward(ctx, grad):
        (pix,) = ctx.saved_tensors
        return grad.reshape(-1, 4)[pix, 0:2], None, None


def edge_planes(pos: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """(B,V,4) clip positions, (F,3) -> (B,F,3,3): for each triangle the three
    homogeneous edge functions ``n_k = c_{k+1} x c_{k+2}`` of the columns
    ``c = (X, Y, W)``. At a pixel with NDC (x, y), ``n_k . (x, y, 1)`` is
    proportional to the perspective-correct barycentric of vertex k."""
    # index_select, not pos[:, tri]: the backward of advanced indexing is an
    # accumulating index_put_, which torch runs with unordered atomic adds
    # once it has more than one thread (and >= 32768 values), so the vertex
    # gradients' rounding changed from run to run. index_select's backward
    # (index_add_) adds in index order: the same sums, bit for bit, as the
    # single-threaded index_put_, on any number of threads.
    # Rows of the flattened (B*V,3) table of (X, Y, W) (batch_rows): the fast kernel,
    # in the same order.
    nb, nv, nf = pos.shape[0], pos.shape[1], tri.shape[0]
    xyw = pos.index_select(2, torch.tensor([0, 1, 3], device=pos.device)).reshape(nb * nv, 3)
    c = xyw.index_select(0, batch_rows(tri.reshape(-1).to(pos.device), nb, nv)).view(nb, nf, 3, 3)  # (B,F,3,3)
    return torch.cross(c.roll(-1, dims=2), c.roll(-2, dims=2), dim=-1)


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution) -> tuple[torch.Tensor, Visibility]:
    """See :func:`handfit.render.rasterize`. pos (B,V,4), tri (F,3) -> (rast (B,H,W,4), Visibility)."""
    from . import zbuffer

    height, width = int(resolution[0]), int(resolution[1])
    nb, nf = pos.shape[0], tri.shape[0]
    planes, boxes = zbuffer.setup_triangles(_numpy_pos(pos), _numpy_tri(tri, pos.shape[1]), height, width)
    ids_np, depth_np = zbuffer.zbuffer(planes, boxes, height, width)
    np_dtype = np.float64 if pos.dtype == torch.float64 else np.float32
    base = np.zeros((nb, height, width, 4), np_dtype)
    pix, face, batch, ndc = zbuffer.covered_pixels(ids_np, depth_np, base)
    dev = pos.device
    pix, face, batch = (torch.from_numpy(a).to(dev) for a in (pix, face, batch))
    p = torch.from_numpy(ndc).to(dev, pos.dtype)  # (N,3) pixel centres (x_ndc, y_ndc, 1)

    # Barycentrics of the covered pixels only, differentiably: gather each
    # pixel's triangle's edge functions (a small per-triangle table, so the
    # backward pass scatters into B*F rows, not into per-pixel buffers).
    table = edge_planes(pos, tri).reshape(nb * nf, 9)
    coef = table.index_select(0, face + batch * nf).view(-1, 3, 3)
    e = (coef * p[:, None, :]).sum(-1)  # (N,3)
    bary = e[:, :2] / e.sum(-1, keepdim=True)
    # A pixel covered only thanks to vertex snapping lies a hair outside the
    # exact triangle. Like nvdiffrast, clamp u and v to [0, 1] (the value
    # only: the gradient is that of the unclamped barycentrics); z/w was
    # clamped to [-1, 1] by covered_pixels.
    bary = bary + (bary.detach().clamp(0.0, 1.0) - bary.detach())
    rast = _PlaceUV.apply(bary, pix, torch.from_numpy(base).to(dev).to(pos.dtype))
    return rast, Visibility(rast, rast._version, pix, face, batch, bary, ids_np, depth_np)


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                visibility: Visibility | None = None) -> torch.Tensor:
    """See :func:`handfit.render.interpolate`. attr (B,T,C) or (T,C) -> (B,H,W,C)."""
    nb, height, width, _ = rast.shape
    if visibility is not None:
        v = visibility.check(rast)
        pix, face, batch, uv = v.pix, v.face, v.batch, v.bary
    else:
        flat = rast.reshape(-1, 4)
        tid = flat[:, 3].detach()
        # > 0.5 and round(): robust to tiny perturbations of the id channel
        # (e.g. gradcheck's finite differences).
        pix = torch.nonzero(tid > 0.5).squeeze(1)
        face = tid[pix].round().long() - 1
        batch = torch.div(pix, height * width, rounding_mode="floor")
        uv = flat.index_select(0, pix)[:, :2]
    vals = _interpolate_at(attr, tri, face, batch, uv)
    return scatter_covered(vals, pix, rast.shape[:3])


def _interpolate_at(attr, tri, face, batch, uv) -> torch.Tensor:
    """attr (B,T,C) or (T,C) at N pixels of triangles ``face`` (N,) in images ``batch``
    (N,) with barycentrics ``uv`` (N,2). -> (N,C)"""
    nc = attr.shape[-1]
    vi = tri.to(face.device).long()[face]  # (N,3)
    if attr.dim() == 2:
        table = attr
    elif attr.shape[0] == 1:
        table = attr[0]
    else:
        vi = vi + (batch * attr.shape[1])[:, None]
        table = attr.reshape(-1, nc)
    a = table.index_select(0, vi.reshape(-1)).view(-1, 3, nc)
    # u*a0 + v*a1 + (1-u-v)*a2 as one batched product.
    w = torch.cat([uv, 1.0 - uv.sum(-1, keepdim=True)], dim=1).to(a.dtype)  # (N,3)
    return (w[:, :, None] * a).sum(1)


def interpolate_covered(attr: torch.Tensor, tri: torch.Tensor, visibility: Visibility) -> torch.Tensor:
    """:func:`interpolate` at the covered pixels only, in ``visibility.pix``'s order
    (raster order): attr (B,T,C) or (T,C) -> (N,C). :func:`scatter_covered` makes the image."""
    return _interpolate_at(attr, tri, visibility.face, visibility.batch, visibility.bary)


def scatter_covered(vals: torch.Tensor, pix: torch.Tensor, shape) -> torch.Tensor:
    """Values (N,C) of the covered pixels ``pix`` (N,) (flat into B*H*W) -> (B,H,W,C)
    images, zero elsewhere."""
    nb, height, width = shape
    # In place on a fresh tensor: no second full-image copy.
    out = vals.new_zeros(nb * height * width, vals.shape[-1]).index_copy_(0, pix, vals)
    return out.view(nb, height, width, vals.shape[-1])


def texture(tex: torch.Tensor, uv: torch.Tensor, filter_mode: str = "linear",
            boundary_mode: str = "clamp") -> torch.Tensor:
    """See :func:`handfit.render.texture`. tex (B,Ht,Wt,C), uv (B,H,W,2) -> (B,H,W,C)."""
    if tex.shape[0] != uv.shape[0]:
        tex = tex.expand(uv.shape[0], -1, -1, -1)  # minibatch broadcast, as nvdiffrast
    img = tex.permute(0, 3, 1, 2)  # (B,C,Ht,Wt)
    ht, wt = img.shape[2], img.shape[3]
    mode = "bilinear" if filter_mode == "linear" else "nearest"
    if boundary_mode == "wrap":
        # Keep the fractional part, then pad the texture by one texel copied from
        # the opposite side so bilinear taps across the seam find their partner.
        uv = uv - torch.floor(uv)
        img = torch.cat([img[:, :, :, -1:], img, img[:, :, :, :1]], dim=3)
        img = torch.cat([img[:, :, -1:, :], img, img[:, :, :1, :]], dim=2)
        # Texel i of the original sits at index i+1 of the padded one.
        gx = (uv[..., 0] * wt + 1.0) * (2.0 / (wt + 2)) - 1.0
        gy = (uv[..., 1] * ht + 1.0) * (2.0 / (ht + 2)) - 1.0
        padding = "border"
    else:
        # grid_sample with align_corners=False puts texel centre i at
        # grid = (2i+1)/Wt - 1, i.e. uv = (i+0.5)/Wt: our convention.
        gx = uv[..., 0] * 2.0 - 1.0
        gy = uv[..., 1] * 2.0 - 1.0
        padding = "border" if boundary_mode == "clamp" else "zeros"
    grid = torch.stack([gx, gy], dim=-1).to(img.dtype)
    out = F.grid_sample(img, grid, mode=mode, padding_mode=padding, align_corners=False)
    return out.permute(0, 2, 3, 1)


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology: Topology | None = None, visibility: Visibility | None = None) -> torch.Tensor:
    """See :func:`handfit.render.antialias`. color (B,H,W,C) -> (B,H,W,C)."""
    from . import zbuffer

    nb, height, width, nc = color.shape
    nv = pos.shape[1]
    opposite = (topology if topology is not None else make_topology(tri)).opposite
    if visibility is not None:
        v = visibility.check(rast)
        ids, depth = v.ids, v.depth
    else:
        ids = (rast[..., 3].detach().round().to("cpu", torch.int32) - 1).contiguous().numpy()
        depth = rast[..., 2].detach().to("cpu", torch.float64).contiguous().numpy()
    front, back, down, va, vb = zbuffer.silhouette_pairs(
        ids, depth, _numpy_pos(pos), _numpy_tri(tri, nv), opposite)
    dev = color.device
    front, back, down = (torch.from_numpy(a).to(dev) for a in (front, back, down))
    b, fx, fy = _pixel_centres(front, height, width, pos.dtype)
    va = torch.from_numpy(va).to(dev) + b * nv
    vb = torch.from_numpy(vb).to(dev) + b * nv

    # Where the edge crosses the segment from the front pixel's centre to the
    # other pixel's, as a fraction of that segment: differentiable in the two
    # edge vertices.
    ends = pos.reshape(-1, 4).index_select(0, torch.cat([va, vb])).view(2, -1, 4)
    sx = (ends[..., 0] / ends[..., 3] + 1.0) * (0.5 * width) - 0.5 - fx  # (2,M)
    sy = (ends[..., 1] / ends[..., 3] + 1.0) * (0.5 * height) - 0.5 - fy
    vertical = (down == 1)
    along = torch.where(vertical, sy, sx)
    across = torch.where(vertical, sx, sy)
    hit = (along[0] * (across[1] - across[0]) - across[0] * (along[1] - along[0])) \
        / (across[1] - across[0])
    toward = torch.where(back > front, 1.0, -1.0).to(hit.dtype)
    t = (toward * hit).clamp(0.0, 1.0)

    # Short of the midpoint the front pixel takes in some of the other colour,
    # past it the other pixel takes in some of the front colour.
    flat = color.reshape(-1, nc)
    cf, cb = flat.index_select(0, torch.cat([front, back])).view(2, -1, nc)
    w_front = (0.5 - t).clamp(min=0.0)[:, None]
    w_back = (t - 0.5).clamp(min=0.0)[:, None]
    delta = torch.cat([w_front * (cb - cf), w_back * (cf - cb)]).to(flat.dtype)
    out = flat.index_add(0, torch.cat([front, back]), delta)
    return out.view(nb, height, width, nc)
