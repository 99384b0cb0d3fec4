"""Pinhole intrinsics, projection and square crops.

Conventions (see ``docs/ARCHITECTURE.md``): 3D points are in the OpenCV camera
frame (x right, y down, z forward, metres); pixel coordinates are OpenCV's,
with the centre of the top-left pixel at ``(0, 0)``, so pixel ``i`` covers
``[i - 0.5, i + 0.5]`` and an image of width ``W`` spans ``[-0.5, W - 0.5]``.

Crops
-----
A :class:`Crop` is a square window of the full image, ``size`` full-image
pixels on a side, whose top-left *corner* (the outer edge of its first pixel,
not that pixel's centre) lies at full-image pixel coordinates ``(x0, y0)``.
It is resampled to ``out_size x out_size`` pixels of side
``s = size / out_size``:

* crop pixel ``j`` has its centre at full-image ``u = x0 + (j + 0.5) * s``
  (:func:`to_full`), i.e. ``j = (u - x0) / s - 0.5`` (:func:`to_crop`);
* the crop's own intrinsics are ``K_crop = A @ K`` with
  ``A = [[1/s, 0, -x0/s - 0.5], [0, 1/s, -y0/s - 0.5], [0, 0, 1]]``
  (:func:`crop_intrinsics`), so ``project(X, K_crop) == to_crop(project(X, K))``;
* :func:`crop_image` samples exactly those pixel centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UsageError

__all__ = [
    "DEFAULT_FOV_DEG",
    "default_focal",
    "intrinsics",
    "intrinsics_matrix",
    "project",
    "Crop",
    "square_crop",
    "crop_intrinsics",
    "crop_image",
    "to_full",
    "to_crop",
]

#: Default field of view in degrees when neither ``--focal`` nor EXIF gives
#: one. It is measured across the image's **longer side** (the horizontal FOV
#: of a landscape photo, the vertical one of a portrait photo): 60 degrees is
#: a typical phone main camera (about 26-28 mm equivalent along the diagonal
#: gives 65-70 degrees on the long side; 60 is a slightly longer, middle
#: ground that also suits cropped and webcam images).
DEFAULT_FOV_DEG = 60.0

_Z_EPS = 1e-6  # metres; ``project`` clamps z to at least this


def default_focal(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> float:
    """Focal length in pixels giving ``fov_deg`` across the longer image side.

    The field of view spans the whole side, edge to edge (``max(W, H)``
    pixels): ``f = max(W, H) / 2 / tan(fov / 2)``.
    """
    if not (width > 0 and height > 0):
        raise UsageError(f"image size must be positive, got {width}x{height}")
    if not (0.0 < fov_deg < 180.0):
        raise UsageError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    return max(width, height) / 2.0 / math.tan(math.radians(fov_deg) / 2.0)


def _valid_focal(f) -> bool:
    try:
        f = float(f)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f) and f > 0


def intrinsics(
    width: int,
    height: int,
    focal: float | None = None,
    exif_focal: float | None = None,
    fov_deg: float = DEFAULT_FOV_DEG,
) -> np.ndarray:
    """Intrinsic matrix ``K`` ``(3,3)`` float64 for a ``width x height`` image.

    The focal length is ``focal`` (explicit, e.g. ``--focal``) if given, else
    ``exif_focal`` (from :attr:`handfit.io.Photo.exif_focal_px`) when it is a
    positive finite number, else :func:`default_focal`. Pixels are square
    (``fx == fy``) and the principal point is the image centre in OpenCV pixel
    coordinates, ``((W - 1) / 2, (H - 1) / 2)``.

    Raises:
        UsageError: ``focal`` is given but not a positive finite number.
    """
    if focal is not None:
        if not _valid_focal(focal):
            raise UsageError(f"focal length must be a positive number of pixels, got {focal!r}")
        f = float(focal)
    elif exif_focal is not None and _valid_focal(exif_focal):
        f = float(exif_focal)
    else:
        f = default_focal(width, height, fov_deg)
    return np.array(
        [[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """``K`` ``(3,3)`` float64 from full pinhole intrinsics in OpenCV pixels.

    ``fx`` and ``fy`` may differ (non-square pixels, or a resized image) and
    the principal point ``(cx, cy)`` may lie anywhere, outside the image too
    (a crop of a larger photo).

    Raises:
        UsageError: a value is not finite, or ``fx``/``fy`` is not positive.
    """
    vals = [float(v) for v in (fx, fy, cx, cy)]
    if not all(math.isfinite(v) for v in vals) or not (vals[0] > 0 and vals[1] > 0):
        raise UsageError(f"intrinsics fx,fy,cx,cy must be finite with fx, fy > 0, got {vals}")
    fx, fy, cx, cy = vals
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def project(points: torch.Tensor, K) -> torch.Tensor:
    """Pinhole projection to OpenCV pixel coordinates; differentiable.

    Args:
        points: ``(B, N, 3)`` camera-frame points (any leading shape works).
        K: ``(B, 3, 3)`` or ``(3, 3)`` intrinsics, a tensor or numpy array
            (converted to ``points``' dtype and device). Its last row must be
            ``[0, 0, 1]``.

    Returns:
        ``(B, N, 2)`` pixel coordinates ``(u, v)``. Depths are clamped to at
        least ``1e-6`` so points at or behind the camera give large but
        finite values (and no gradient through ``z`` there).
    """
    K = torch.as_tensor(K, dtype=points.dtype, device=points.device)
    z = points[..., 2:3].clamp(min=_Z_EPS)
    xy = points[..., :2] / z  # normalised image coordinates
    A = K[..., :2, :2]  # (B,2,2) or (2,2); broadcasting over the N points
    t = K[..., :2, 2]
    return xy @ A.transpose(-1, -2) + t.unsqueeze(-2)


# ---------------------------------------------------------------- crops


@dataclass(frozen=True)
class Crop:
    """A square crop window (see the module docstring for the conventions).

    Attributes:
        x0, y0: full-image pixel coordinates of the crop's top-left corner
            (the outer edge of its first pixel, not that pixel's centre).
        size: side of the window in full-image pixels.
        out_size: side of the resampled crop image in pixels.
    """

    x0: float
    y0: float
    size: float
    out_size: int

    @property
    def scale(self) -> float:
        """Full-image pixels per crop pixel, ``size / out_size``."""
        return self.size / self.out_size

    @property
    def center(self) -> tuple[float, float]:
        """Centre of the window in full-image pixel coordinates."""
        return (self.x0 + self.size / 2.0, self.y0 + self.size / 2.0)

    def matrix(self) -> np.ndarray:
        """``(3,3)`` affine map from full-image to crop pixel coordinates."""
        s = self.scale
        return np.array(
            [
                [1.0 / s, 0.0, -self.x0 / s - 0.5],
                [0.0, 1.0 / s, -self.y0 / s - 0.5],
                [0.0, 0.0, 1.0],
            ],
            dtype=np.float64,
        )


def square_crop(box_xyxy, scale: float = 1.4, out_size: int = 256) -> Crop:
    """Square crop centred on a box, ``scale`` times its longer side.

    Args:
        box_xyxy: ``(x1, y1, x2, y2)`` in full-image pixel coordinates.
        scale: side of the square relative to ``max(x2 - x1, y2 - y1)``.
        out_size: side of the resampled crop image in pixels.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box_xyxy, dtype=np.float64).reshape(4))
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
        raise UsageError(f"invalid box (x1, y1, x2, y2): {(x1, y1, x2, y2)}")
    if not (scale > 0) or int(out_size) < 1:
        raise UsageError(f"crop scale and out_size must be positive, got {scale}, {out_size}")
    side = max(x2 - x1, y2 - y1) * float(scale)
    side = max(side, 1.0)  # a degenerate box still gives a usable crop
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return Crop(cx - side / 2.0, cy - side / 2.0, side, int(out_size))


def crop_intrinsics(K, crop: Crop):
    """Intrinsics of the crop image: projecting with them gives crop pixels.

    ``K`` may be a numpy array or a tensor, ``(3,3)`` or batched ``(...,3,3)``;
    the result has the same type, dtype, device and shape.
    """
    A = crop.matrix()
    if isinstance(K, torch.Tensor):
        return torch.as_tensor(A, dtype=K.dtype, device=K.device) @ K
    K = np.asarray(K)
    return (A @ K.astype(np.float64)).astype(np.result_type(K.dtype, np.float32))


def _affine_uv(uv, a: float, bx: float, by: float):
    """``uv * a + (bx, by)`` for numpy arrays and tensors of shape ``(..., 2)``."""
    if isinstance(uv, torch.Tensor):
        b = torch.tensor([bx, by], dtype=uv.dtype, device=uv.device)
        return uv * a + b
    uv = np.asarray(uv, dtype=np.float64)
    return uv * a + np.array([bx, by])


def to_full(uv, crop: Crop):
    """Crop pixel coordinates ``(..., 2)`` -> full-image pixel coordinates."""
    s = crop.scale
    return _affine_uv(uv, s, crop.x0 + 0.5 * s, crop.y0 + 0.5 * s)


def to_crop(uv, crop: Crop):
    """Full-image pixel coordinates ``(..., 2)`` -> crop pixel coordinates."""
    s = crop.scale
    return _affine_uv(uv, 1.0 / s, -crop.x0 / s - 0.5, -crop.y0 / s - 0.5)


def crop_image(
    rgb: np.ndarray,
    crop: Crop,
    border: str = "replicate",
    max_supersample: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample the crop window of ``rgb`` to ``out_size x out_size``.

    Args:
        rgb: ``(H, W, C)`` or ``(H, W)`` image (``uint8`` or float32).
        crop: the window.
        border: ``"replicate"`` (edge pixels repeat) or ``"constant"`` (zeros)
            for the part of the window outside the image.
        max_supersample: when the window is shrunk by a factor ``s > 1`` it is
            first sampled on a grid ``k = min(ceil(s), max_supersample)`` times
            finer and area-averaged down, which avoids aliasing.

    Returns:
        ``(out, valid)``: the crop image with ``rgb``'s dtype and channels, and
        a ``(out_size, out_size)`` bool mask, True where the crop pixel's
        centre lies inside the image (``[-0.5, W - 0.5] x [-0.5, H - 0.5]``).
    """
    import cv2

    if rgb.ndim not in (2, 3) or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise UsageError(f"crop_image expects an (H, W[, C]) image, got shape {rgb.shape}")
    modes = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}
    if border not in modes:
        raise UsageError(f"border must be 'replicate' or 'constant', got {border!r}")
    H, W = rgb.shape[:2]
    n = int(crop.out_size)
    s = crop.scale
    k = 1 if s <= 1.0 else int(min(math.ceil(s - 1e-9), max(1, max_supersample)))
    # Sample on an (n*k)^2 grid: fine pixel centres x0 + (m + 0.5) * s / k.
    fine = Crop(crop.x0, crop.y0, crop.size, n * k)
    M = fine.matrix()[:2]
    src = np.ascontiguousarray(rgb)
    out = cv2.warpAffine(
        src,
        M,
        (n * k, n * k),
        flags=cv2.INTER_LINEAR,
        borderMode=modes[border],
        borderValue=0,
    )
    if k > 1:
        out = cv2.resize(out, (n, n), interpolation=cv2.INTER_AREA)
    if out.ndim == 2 and rgb.ndim == 3:
        out = out[:, :, None]
    centres = crop.x0 + (np.arange(n) + 0.5) * s, crop.y0 + (np.arange(n) + 0.5) * s
    vx = (centres[0] >= -0.5) & (centres[0] <= W - 0.5)
    vy = (centres[1] >= -0.5) & (centres[1] <= H - 0.5)
    valid = vy[:, None] & vx[None, :]
    return out, valid
