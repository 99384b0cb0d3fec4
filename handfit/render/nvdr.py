"""nvdiffrast backend: thin wrappers that fix dtypes and layouts.

nvdiffrast wants contiguous float32 tensors and int32 triangles on the GPU;
these wrappers convert on the way in and cast results back to the caller's
dtype, so autograd flows through the casts. A ``RasterizeCudaContext`` is slow
to create: the caller makes one (:func:`make_context`) and passes it in.
"""

from __future__ import annotations

import shutil
import threading

import torch

from ..errors import BackendError

_lock = threading.Lock()
_dr = None  # the imported nvdiffrast.torch, once its CUDA plugin has been built (an import, not state)


def _missing_tools() -> list:
    """Build tools nvdiffrast's first-use JIT compile needs and cannot find."""
    from torch.utils import cpp_extension

    missing = []
    if cpp_extension.CUDA_HOME is None and shutil.which("nvcc") is None:
        missing.append("nvcc (CUDA toolkit; set CUDA_HOME)")
    if not cpp_extension.is_ninja_available():
        missing.append("ninja")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        missing.append("a C++ compiler (c++/g++)")
    return missing


def _module():
    """nvdiffrast.torch with its CUDA plugin built (compiled once, then cached on disk)."""
    global _dr
    if _dr is not None:
        return _dr
    with _lock:
        if _dr is not None:
            return _dr
        if not torch.cuda.is_available():
            raise BackendError("the nvdiffrast renderer needs a CUDA GPU; use --renderer cpu")
        try:
            import nvdiffrast.torch as dr
        except ImportError as exc:
            raise BackendError(f"nvdiffrast is not installed ({exc}); "
                               "install diffrp-nvdiffrast or use --renderer cpu") from exc
        try:
            dr.ops._get_plugin()  # JIT-compiles on first use, loads the cached build after
        except Exception as exc:
            missing = _missing_tools()
            what = ("missing " + ", ".join(missing)) if missing else f"{type(exc).__name__}: {exc}"
            raise BackendError(f"nvdiffrast could not build its CUDA plugin ({what}); "
                               "use --renderer cpu") from exc
        _dr = dr
        return dr


def make_context(device: torch.device):
    """A new RasterizeCudaContext on ``device`` (CUDA)."""
    dr = _module()
    index = device.index if device.index is not None else torch.cuda.current_device()
    return dr.RasterizeCudaContext(device=torch.device("cuda", index))


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous()


def _i32(tri: torch.Tensor, device) -> torch.Tensor:
    return tri.to(device=device, dtype=torch.int32).contiguous()


def rasterize(pos: torch.Tensor, tri: torch.Tensor, resolution, context=None) -> tuple[torch.Tensor, None]:
    """context: from :func:`make_context` (made here when None: slow, pass one)."""
    dr = _module()
    ctx = context if context is not None else make_context(pos.device)
    rast, _ = dr.rasterize(ctx, _f32(pos), _i32(tri, pos.device),
                           (int(resolution[0]), int(resolution[1])), grad_db=False)
    return rast.to(pos.dtype), None  # nvdiffrast keeps no visibility state for us


def make_topology(tri: torch.Tensor):
    """nvdiffrast's own topology hash for :func:`antialias`."""
    return _module().antialias_construct_topology_hash(_i32(tri, tri.device))


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, visibility=None) -> torch.Tensor:
    dr = _module()
    if attr.dim() == 2:
        attr = attr[None]  # one table for every image: minibatch broadcast
    out, _ = dr.interpolate(_f32(attr), _f32(rast), _i32(tri, rast.device))
    return out.to(torch.promote_types(attr.dtype, rast.dtype))


def texture(tex: torch.Tensor, uv: torch.Tensor, filter_mode: str, boundary_mode: str) -> torch.Tensor:
    dr = _module()
    out = dr.texture(_f32(tex), _f32(uv), filter_mode=filter_mode, boundary_mode=boundary_mode)
    return out.to(torch.promote_types(tex.dtype, uv.dtype))


def antialias(color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor,
              topology=None, visibility=None) -> torch.Tensor:
    dr = _module()
    out = dr.antialias(_f32(color), _f32(rast), _f32(pos), _i32(tri, pos.device), topology_hash=topology)
    return out.to(color.dtype)
