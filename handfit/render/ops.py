"""The four rasterization primitives, dispatched to a backend.

``backend="auto"`` uses nvdiffrast for CUDA tensors and our numba + torch
backend (:mod:`handfit.render.cpu`) otherwise; ``"cpu"`` or ``"nvdiffrast"``
forces one. The ``"cpu"`` backend also accepts CUDA tensors: its visibility
pass runs on the CPU and the rest on the tensors' device.
"""

from __future__ import annotations

import torch

from ..errors import BackendError, ShapeError, UsageError

BACKENDS = ("auto", "cpu", "nvdiffrast")


def pick_backend(backend: str, tensor: torch.Tensor) -> str:
    """Resolve ``backend`` ("auto" | "cpu" | "nvdiffrast") for a tensor's device."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown renderer backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nvdiffrast" if tensor.is_cuda else "cpu"
    if backend == "nvdiffrast" and not tensor.is_cuda:
        raise BackendError("the nvdiffrast backend needs CUDA tensors; use --renderer cpu")
    return backend


def _check(name: str, x: torch.Tensor, ranks: tuple, last: int | None = None, what: str = "") -> None:
    """Refuse a tensor of the wrong rank or last dimension, quoting its shape."""
    if not torch.is_tensor(x):
        raise ShapeError(f"{name} must be a torch.Tensor {what}, got {type(x).__name__}")
    if x.dim() not in ranks or (last is not None and x.shape[-1] != last):
        raise ShapeError(f"{name} must be {what}, got shape {tuple(x.shape)}")


def _impl(name: str):
    if name == "cpu":
        from . import cpu

        return cpu
    from . import nvdr

    return nvdr


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution, backend: str = "auto",
              return_visibility: bool = False, context=None):
    """Rasterize triangles.

    Args:
        pos: (B,V,4) clip-space vertex positions (or (V,4) for one image), e.g.
            from :func:`camera_to_clip`.
        tri: (F,3) int32 (int64 accepted) vertex indices, shared by the batch.
        resolution: (H,W) output size.
        backend: "auto" | "cpu" | "nvdiffrast".
        return_visibility: also return the backend's visibility state (the CPU
            backend's :class:`~handfit.render.cpu.Visibility`, None for
            nvdiffrast), to pass to :func:`interpolate` and :func:`antialias`
            with this same ``rast`` so they skip rescanning the image.
        context: the backend's rasterizer state from :func:`make_context`
            (nvdiffrast's ``RasterizeCudaContext``; None on the CPU). Making
            one is slow: make it once and pass it to every call.

    Returns:
        rast (B,H,W,4), or (rast, visibility) with ``return_visibility``; rast has the dtype of ``pos``: (u, v, z/w, triangle_id + 1) per
        pixel, all zero on background. (u, v) are perspective-correct
        barycentrics: an attribute is ``u*a0 + v*a1 + (1-u-v)*a2`` with
        a_k the value at vertex ``tri[id, k]``. They carry gradients to
        ``pos``; z/w does not (as in nvdiffrast). The nearest surface
        (smallest z/w) wins; only -1 <= z/w <= 1 is drawn. Pixel (x, y) is
        sampled at NDC ((2x+1)/W - 1, (2y+1)/H - 1): row 0 is NDC y = -1.
        Both faces of a triangle are drawn. Ids are exact up to 2**24 triangles.
    """
    _check("pos", pos, (2, 3), 4, "(B,V,4) or (V,4) clip coordinates")
    _check("tri", tri, (2,), 3, "(F,3) vertex indices")
    if pos.dim() == 2:
        pos = pos[None]
    backend = pick_backend(backend, pos)
    if backend == "cpu":
        rast, vis = _impl(backend).rasterize(pos, tri, resolution)
    else:
        rast, vis = _impl(backend).rasterize(pos, tri, resolution, context)
    return (rast, vis) if return_visibility else rast


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, backend: str = "auto",
                visibility=None) -> torch.Tensor:
    """Interpolate per-vertex attributes over the rasterized triangles.

    Args:
        attr: (B,T,C) or (T,C) attribute table (a batch of 1 broadcasts).
        rast: (B,H,W,4) output of :func:`rasterize`.
        tri: (F,3) indices into ``attr`` for each triangle id in ``rast``. Usually
            the ``tri`` given to :func:`rasterize`, but it may be any index
            tensor with the same F, e.g. ``uv_faces`` into a UV table of T
            entries, to interpolate face-corner attributes (UV seams).

    Returns:
        (B,H,W,C) ``u*a0 + v*a1 + (1-u-v)*a2``, zero on background.
        Gradients reach ``attr`` and the (u, v) channels of ``rast``.
    """
    _check("attr", attr, (2, 3), None, "(B,T,C) or (T,C) attributes")
    _check("rast", rast, (4,), 4, "(B,H,W,4) rasterizer output")
    _check("tri", tri, (2,), 3, "(F,3) indices into attr")
    return _impl(pick_backend(backend, rast)).interpolate(attr, rast, tri, visibility)


def texture(tex: torch.Tensor, uv: torch.Tensor, filter_mode: str = "linear",
            boundary_mode: str = "clamp", backend: str = "auto") -> torch.Tensor:
    """Sample a 2D texture.

    Args:
        tex: (B,Ht,Wt,C) texture (a batch of 1 broadcasts).
        uv: (B,H,W,2) texture coordinates; u indexes columns and v rows,
            texel (i, j) has its centre at uv = ((j+0.5)/Wt, (i+0.5)/Ht), so
            uv = (0,0) is the corner of row 0 (nvdiffrast convention).
        filter_mode: "linear" (bilinear) or "nearest". No mip-mapping.
        boundary_mode: "clamp" (to the boundary texel centres), "wrap"
            (fractional part of uv) or "zero". Note nvdiffrast's own default
            is "wrap"; ours is "clamp".

    Returns:
        (B,H,W,C). Gradients reach ``tex`` and ``uv`` (not for "nearest").
    """
    _check("tex", tex, (4,), None, "(B,Ht,Wt,C) texture")
    _check("uv", uv, (4,), 2, "(B,H,W,2) texture coordinates")
    if filter_mode not in ("linear", "nearest"):
        raise UsageError(f"texture filter_mode must be 'linear' or 'nearest', not {filter_mode!r}")
    if boundary_mode not in ("clamp", "wrap", "zero"):
        raise UsageError(f"texture boundary_mode must be 'clamp', 'wrap' or 'zero', not {boundary_mode!r}")
    return _impl(pick_backend(backend, uv)).texture(tex, uv, filter_mode, boundary_mode)


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              backend: str = "auto", topology=None, visibility=None) -> torch.Tensor:
    """Analytic antialiasing of silhouette edges (nvdiffrast's method).

    For every pair of horizontally or vertically adjacent pixels with
    different triangle ids, the nearer triangle's silhouette edge that
    crosses the segment between the two pixel centres (if any) sets how far
    each colour bleeds into the other pixel. Gradients reach ``color`` and,
    through the crossing point, the two vertices of that edge in ``pos``.

    Args:
        color: (B,H,W,C) image to antialias, e.g. shaded colours.
        rast: (B,H,W,4) output of :func:`rasterize` for ``pos`` and ``tri``.
        pos: (B,V,4) or (V,4) the clip-space positions given to :func:`rasterize`.
        tri: (F,3) the triangles given to :func:`rasterize`. Silhouettes are
            found from shared vertex indices, so a closed mesh must not
            duplicate vertices along seams.
        topology: :func:`make_topology` of ``tri`` for this backend, built
            once per mesh by the caller (nvdiffrast's topology hash); None
            builds it on every call.
        visibility: what ``rasterize(..., return_visibility=True)`` returned
            with this ``rast``, or None.

    Returns:
        (B,H,W,C) antialiased image.
    """
    _check("color", color, (4,), None, "(B,H,W,C) image")
    _check("rast", rast, (4,), 4, "(B,H,W,4) rasterizer output")
    _check("pos", pos, (2, 3), 4, "(B,V,4) or (V,4) clip coordinates")
    _check("tri", tri, (2,), 3, "(F,3) vertex indices")
    if pos.dim() == 2:
        pos = pos[None]
    if pos.shape[0] != rast.shape[0]:
        pos = pos.expand(rast.shape[0], -1, -1)
    return _impl(pick_backend(backend, color)).antialias(color, rast, pos, tri, topology, visibility)


def make_context(device, backend: str = "auto"):
    """The rasterizer state for ``device`` (a torch device) that :func:`rasterize` takes:
    nvdiffrast's ``RasterizeCudaContext`` for CUDA with the nvdiffrast backend, None
    otherwise (the CPU backend keeps none)."""
    device = torch.device(device)
    backend = pick_backend(backend, torch.empty(0, device=device))
    return None if backend == "cpu" else _impl(backend).make_context(device)


def make_topology(tri: torch.Tensor, backend: str = "cpu"):
    """The antialiasing topology of ``tri`` (F,3) for ``backend`` ("cpu" or
    "nvdiffrast", already resolved by :func:`pick_backend`): build it once per
    mesh and pass it to every :func:`antialias` call."""
    _check("tri", tri, (2,), 3, "(F,3) vertex indices")
    return _impl(backend).make_topology(tri)
