"""Loading photos: any common input becomes contiguous ``uint8`` RGB.

:func:`load_image` accepts a path, raw bytes, a binary file object, a numpy
array or a PIL image and returns a :class:`Photo`.

Conversions
-----------
* EXIF orientation is applied (``ImageOps.exif_transpose``), so ``rgb`` is the
  photo as a viewer shows it and ``width``/``height`` are after rotation.
* Transparency (RGBA, LA, PA, palette with a transparent colour) is
  **composited over white**; a hand cut out on a transparent background thus
  sits on a plain white background.
* Grayscale (``1``, ``L``) is replicated to three channels.
* 16-bit and 32-bit integer data (``I;16*``, ``I``, ``uint16`` arrays) is
  scaled from ``0..65535`` to ``0..255`` (``I`` values are clipped to that
  range first); float data (``F`` images, float arrays) is read as ``0..1``.
* CMYK, YCbCr, LAB and HSV go through PIL's conversion to RGB.
* Multi-frame files (GIF, TIFF) give their first frame.
* Numpy arrays are taken as RGB(A) channel order (not OpenCV's BGR).

Errors
------
Every unreadable input raises :class:`handfit.errors.ImageError` with a single
line naming the input: a missing file, a directory, an empty file, something
that is not an image, a truncated image (never silently padded) or an image of
zero size. Nothing is ever written to disk.

EXIF focal length
-----------------
:attr:`Photo.exif_focal_px` is the focal length in pixels of the *stored*
image, or ``None``. See :func:`exif_focal_px` for the formulas.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageError

__all__ = ["Photo", "load_image", "exif_focal_px", "FULL_FRAME_DIAGONAL_MM"]

# Diagonal of a 36 x 24 mm "35 mm" frame: sqrt(36^2 + 24^2).
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.2666

# EXIF tags (IFD0 and the Exif sub-IFD).
_TAG_ORIENTATION = 0x0112
_IFD_EXIF = 0x8769
_TAG_FOCAL_LENGTH = 0x920A
_TAG_FOCAL_35MM = 0xA405
_TAG_FP_XRES = 0xA20E
_TAG_FP_YRES = 0xA20F
_TAG_FP_UNIT = 0xA210
_TAG_PIXEL_X = 0xA002
_TAG_PIXEL_Y = 0xA003
# FocalPlaneResolutionUnit -> millimetres per unit (2 = inch is the EXIF default).
_FP_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}


@dataclass
class Photo:
    """A loaded photo.

    Attributes:
        rgb: ``(H, W, 3)`` ``uint8`` C-contiguous array, EXIF orientation applied.
        path: the file it came from, or ``None`` (bytes, arrays, PIL images).
        exif_focal_px: focal length in pixels of this (rotated) image from EXIF,
            or ``None`` when EXIF does not give one.
        width, height: ``W`` and ``H`` of ``rgb``.
    """

    rgb: np.ndarray
    path: Path | None = None
    exif_focal_px: float | None = None
    width: int = field(init=False)
    height: int = field(init=False)

    def __post_init__(self):
        self.height, self.width = int(self.rgb.shape[0]), int(self.rgb.shape[1])


def load_image(src: Any) -> Photo:
    """Load ``src`` into a :class:`Photo`.

    Args:
        src: a path (``str`` or ``os.PathLike``), ``bytes``/``bytearray``/
            ``memoryview`` of an encoded image, a binary file object, a numpy
            array ``(H,W)``, ``(H,W,1)``, ``(H,W,3)`` or ``(H,W,4)`` of
            ``uint8``/``uint16``/float (``0..1``)/``bool``, or a PIL image.

    Raises:
        ImageError: the input cannot be read as a non-empty, complete image.
    """
    if isinstance(src, Photo):
        return src
    if isinstance(src, np.ndarray):
        return Photo(_array_to_rgb(src, "array"))
    if isinstance(src, Image.Image):
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            src.load()
            im = ImageOps.exif_transpose(src)
            focal = _focal_from_pil(src)
            return Photo(_pil_to_rgb(im, "PIL image"), None, focal)
        except ImageError:
            raise
        except Exception as e:  # noqa: BLE001 - any PIL failure is a bad image
            raise ImageError(f"PIL image: cannot read: {_one_line(e)}") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        data = _read_file(path)
        return _decode(data, str(path), path)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode(bytes(src), "image bytes", None)
    if hasattr(src, "read"):
        name = getattr(src, "name", None)
        label = str(name) if isinstance(name, str) else "image stream"
        try:
            data = src.read()
        except Exception as e:  # noqa: BLE001
            raise ImageError(f"{label}: cannot read: {_one_line(e)}") from None
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"{label}: the stream is not binary")
        return _decode(bytes(data), label, Path(name) if isinstance(name, str) else None)
    raise ImageError(
        f"cannot load an image from {type(src).__name__}: "
        "expected a path, bytes, a file object, a numpy array or a PIL image"
    )


# ---------------------------------------------------------------- decoding


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or _one_line(e)}") from None
    return data


def _decode(data: bytes, label: str, path: Path | None) -> Photo:
    if len(data) == 0:
        raise ImageError(f"{label}: empty file (0 bytes)")
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # never pad a cut file with grey
    try:
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(f"{label}: not an image (unrecognised format)") from None
        except Image.DecompressionBombError as e:
            raise ImageError(f"{label}: image too large: {_one_line(e)}") from None
        except Exception as e:  # noqa: BLE001
            raise ImageError(f"{label}: corrupt or truncated image: {_one_line(e)}") from None
        fmt = im.format or "image"
        if im.width <= 0 or im.height <= 0:
            raise ImageError(f"{label}: zero-size {fmt} ({im.width}x{im.height})")
        if fmt == "JPEG" and not _jpeg_complete(data):
            raise ImageError(f"{label}: truncated JPEG (the data ends before the end-of-image marker)")
        if fmt == "PNG" and data.rfind(b"IEND") < 0:
            raise ImageError(f"{label}: truncated PNG (no IEND chunk)")
        try:
            im.load()  # force a full decode: truncation surfaces here
        except Image.DecompressionBombError as e:
            raise ImageError(f"{label}: image too large: {_one_line(e)}") from None
        except (OSError, SyntaxError, EOFError, ValueError) as e:
            msg = _one_line(e)
            kind = "truncated" if "truncat" in msg.lower() or isinstance(e, EOFError) else "corrupt"
            raise ImageError(f"{label}: {kind} {fmt}: {msg}") from None
        except Exception as e:  # noqa: BLE001
            raise ImageError(f"{label}: corrupt {fmt}: {_one_line(e)}") from None
        try:
            rotated = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - malformed EXIF: keep the stored orientation
            rotated = im
        focal = _focal_from_pil(im)
        rgb = _pil_to_rgb(rotated, label)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    return Photo(rgb, path, focal)


# In entropy-coded data 0xFF is followed by 0x00 (stuffing) or a restart
# marker RST0-7; anything else ends the scan.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def _jpeg_complete(data: bytes) -> bool:
    """True unless the main JPEG image provably ends before its EOI marker.

    Walks the marker segments from SOI (skipping APPn payloads such as an EXIF
    thumbnail by their lengths) and each scan's entropy-coded data up to the
    main image's end-of-image marker. Data after EOI (motion-photo videos,
    maker trailers) is never looked at. A layout it does not understand
    returns True and is left to PIL.
    """
    n = len(data)
    if n < 4 or data[:2] != b"\xff\xd8":
        return True
    pos = 2
    while True:
        if pos + 1 >= n:
            return False
        if data[pos] != 0xFF:
            return True  # not a marker where one belongs: let PIL judge
        while pos + 1 < n and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        if pos + 1 >= n:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if pos + 4 > n:
            return False
        end = pos + 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if end > n:
            return False
        if marker != 0xDA:  # SOS is followed by entropy-coded data
            pos = end
            continue
        m = _JPEG_SCAN_END.search(data, end)
        if m is None:
            return False
        pos = m.start()


def _pil_to_rgb(im: Image.Image, label: str) -> np.ndarray:
    if im.width <= 0 or im.height <= 0:
        raise ImageError(f"{label}: zero-size image ({im.width}x{im.height})")
    mode = im.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    if mode in ("RGBA", "LA", "RGBa", "La"):
        im = im.convert("RGBA")  # premultiplied and LA -> straight RGBA
        return _array_to_rgb(np.asarray(im), label)
    if mode in ("1", "L"):
        return _array_to_rgb(np.asarray(im.convert("L")), label)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)
        return _array_to_rgb(np.clip(a, 0, 65535).astype(np.uint16), label)
    if mode == "F":
        return _array_to_rgb(np.asarray(im, dtype=np.float32), label)
    try:  # CMYK, YCbCr, LAB, HSV, ...
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"{label}: unsupported image mode {mode!r}: {_one_line(e)}") from None


def _array_to_rgb(a: np.ndarray, label: str) -> np.ndarray:
    """``(H,W)``/``(H,W,1|3|4)`` array of any supported dtype -> uint8 RGB."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ImageError(f"{label}: expected shape (H,W), (H,W,3) or (H,W,4), got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{label}: zero-size image ({a.shape[1]}x{a.shape[0]})")
    f = _to_unit_float(a, label)  # float32 in [0,1]
    if f.ndim == 2:
        f = np.repeat(f[:, :, None], 3, axis=2)
    elif f.shape[2] == 4:
        alpha = f[:, :, 3:4]
        f = f[:, :, :3] * alpha + (1.0 - alpha)  # composite over white
    out = np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def _to_unit_float(a: np.ndarray, label: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(f, 0.0, 1.0)
    if np.issubdtype(a.dtype, np.integer):
        if a.min(initial=0) >= 0 and a.max(initial=0) <= 255:
            return a.astype(np.float32) / 255.0
        return np.clip(a, 0, 65535).astype(np.float32) / 65535.0
    raise ImageError(f"{label}: unsupported array dtype {a.dtype}")


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s or type(e).__name__


# ---------------------------------------------------------------- EXIF focal


def _focal_from_pil(im: Image.Image) -> float | None:
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001
        return None
    if not exif:
        return None
    try:
        sub = dict(exif.get_ifd(_IFD_EXIF))
    except Exception:  # noqa: BLE001
        sub = {}
    tags = {**dict(exif), **sub}
    return exif_focal_px(tags, im.size)


def _num(v: Any) -> float | None:
    try:
        if isinstance(v, tuple) and len(v) == 2:  # (numerator, denominator)
            f = float(v[0]) / float(v[1])
        else:
            f = float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if math.isfinite(f) and f > 0 else None


# Accepted range of the 35 mm-equivalent focal length implied by an EXIF
# result (about 160 to 1.2 degrees of diagonal field of view); anything outside
# comes from stale or broken tags.
_F35_RANGE_MM = (4.0, 2000.0)


def _plausible(f_px: float, w: int, h: int) -> bool:
    if not (math.isfinite(f_px) and f_px > 0):
        return False
    f35 = f_px * FULL_FRAME_DIAGONAL_MM / math.hypot(w, h)
    return _F35_RANGE_MM[0] <= f35 <= _F35_RANGE_MM[1]


def exif_focal_px(
    tags: dict,
    stored_size: tuple[int, int],
) -> float | None:
    """Focal length in pixels from EXIF tags, or ``None``.

    Args:
        tags: EXIF tag id -> value (IFD0 merged with the Exif sub-IFD).
        stored_size: ``(W, H)`` of the image as stored in the file (before the
            orientation transpose): the frame ``FocalPlaneXResolution`` and
            ``PixelXDimension`` refer to.

    The result holds for the image after the EXIF orientation transpose too:
    a focal length in pixels (square pixels) does not change under 90-degree
    rotations and flips; only the principal point moves, and that is taken at
    the centre of the rotated image by :func:`handfit.camera.intrinsics`.

    Formulas, in order of preference:

    1. ``FocalLengthIn35mmFilm`` (``f35`` mm): the 35 mm equivalent keeps the
       field of view along the *diagonal* of a 36 x 24 mm frame, so
       ``f_px = f35 * diag_px / 43.27`` with ``diag_px = hypot(W, H)`` (the
       diagonal is the same before and after rotation). This is also right
       for 4:3 and other aspect ratios, where a long-side formula
       ``f35 / 36 * W`` would not be.
    2. ``FocalLength`` (mm) with ``FocalPlaneXResolution`` (pixels per unit on
       the sensor) and ``FocalPlaneResolutionUnit`` (2 inch, 3 cm, 4 mm,
       5 um): ``f_px = f_mm * xres / mm_per_unit``. The resolution refers to
       the camera's own pixel grid; when ``PixelXDimension`` (the width the
       camera wrote) differs from the stored width the result is rescaled by
       ``stored_long_side / camera_long_side`` (a resized photo that kept
       its EXIF). Without ``PixelXDimension`` the frame is unknown and the
       result is ``None``: editors that resize (e.g. Lightroom exports) drop
       it but keep a focal-plane resolution that is then off by the resize
       factor.

    ``FocalLength`` alone does not give pixels (the sensor size is unknown)
    and yields ``None``. Results whose 35 mm equivalent lies outside
    4..2000 mm are rejected as broken tags (``None``).
    """
    w, h = (int(stored_size[0]), int(stored_size[1]))
    if w <= 0 or h <= 0:
        return None
    f35 = _num(tags.get(_TAG_FOCAL_35MM))
    if f35 is not None:
        f_px = f35 * math.hypot(w, h) / FULL_FRAME_DIAGONAL_MM
        return float(f_px) if _plausible(f_px, w, h) else None
    f_mm = _num(tags.get(_TAG_FOCAL_LENGTH))
    xres = _num(tags.get(_TAG_FP_XRES)) or _num(tags.get(_TAG_FP_YRES))
    if f_mm is None or xres is None:
        return None
    unit = tags.get(_TAG_FP_UNIT, 2)
    try:
        mm_per_unit = _FP_UNIT_MM.get(int(unit))
    except (TypeError, ValueError):
        mm_per_unit = None
    if mm_per_unit is None:
        return None
    f_px = f_mm * xres / mm_per_unit
    px_x = _num(tags.get(_TAG_PIXEL_X))
    px_y = _num(tags.get(_TAG_PIXEL_Y))
    if px_x is None:
        # Without the camera's own width the frame the focal-plane resolution
        # refers to is unknown; editors that resize often drop both tags.
        return None
    if px_y is not None:
        # Compare long sides: some writers swap the two for rotated photos.
        cam_long = max(px_x, px_y)
        if abs(cam_long - max(w, h)) >= 1:
            f_px *= max(w, h) / cam_long
    elif int(px_x) not in (w, h):
        f_px *= w / px_x
    return float(f_px) if _plausible(f_px, w, h) else None
