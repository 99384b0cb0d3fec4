"""handfit.io.image: loading, conversions, EXIF orientation and focal, errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageFile

from handfit.errors import ImageError
from handfit.io import Photo, load_image
from handfit.io.image import FULL_FRAME_DIAGONAL_MM, exif_focal_px

# EXIF tag ids used below.
ORIENTATION, EXIF_IFD = 0x0112, 0x8769
FOCAL, FOCAL35 = 0x920A, 0xA405
FP_XRES, FP_UNIT, PIX_X, PIX_Y = 0xA20E, 0xA210, 0xA002, 0xA003


def _noise(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _assert_rgb8(photo: Photo, h: int, w: int):
    assert isinstance(photo, Photo)
    assert photo.rgb.dtype == np.uint8
    assert photo.rgb.shape == (h, w, 3)
    assert photo.rgb.flags["C_CONTIGUOUS"]
    assert (photo.height, photo.width) == (h, w)


# ---------------------------------------------------------------- errors


def _raises_one_line(src, *words):
    with pytest.raises(ImageError) as info:
        load_image(src)
    msg = str(info.value)
    assert "\n" not in msg and msg
    for word in words:
        assert word in msg.lower(), msg
    assert info.value.exit_code == 4
    return msg


def test_missing_file(tmp_path):
    msg = _raises_one_line(tmp_path / "nope.jpg", "no such file")
    assert "nope.jpg" in msg


def test_directory(tmp_path):
    _raises_one_line(tmp_path, "directory")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _raises_one_line(p, "empty")
    _raises_one_line(b"", "empty")


def test_text_file(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n" * 20)
    _raises_one_line(p, "not an image")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated(tmp_path, fmt, keep):
    data = _encode(Image.fromarray(_noise(120, 160)), fmt)
    cut = data[: int(len(data) * keep)]
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(cut)
    _raises_one_line(p, "truncated")
    assert p.read_bytes() == cut  # nothing is modified on disk
    _raises_one_line(cut, "truncated")


def test_jpeg_with_trailing_data_is_complete():
    """Data after EOI (e.g. a motion photo's video) is not mistaken for truncation."""
    rgb = _noise(120, 160)
    data = _jpeg_with_exif(rgb, 1, {FOCAL35: 28})  # has an EXIF block before the scan
    rng = np.random.default_rng(3)
    for _ in range(5):
        trailer = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes() + b"\xff\xda\x00\x08"
        assert load_image(data + trailer).rgb.shape == (120, 160, 3)
    for cut in (len(data) - 2, len(data) * 3 // 4):
        with pytest.raises(ImageError, match="truncated"):
            load_image(data[:cut] + b"\x00" * 16)


def test_truncated_even_when_pil_pads_globally(tmp_path):
    data = _encode(Image.fromarray(_noise(120, 160)), "JPEG")
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        _raises_one_line(data[: len(data) // 2], "truncated")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_zero_size():
    _raises_one_line(np.zeros((0, 5, 3), np.uint8), "zero-size")
    _raises_one_line(np.zeros((5, 0), np.uint8), "zero-size")
    _raises_one_line(Image.new("RGB", (0, 0)), "zero-size")


def test_bad_array_shape_and_type():
    _raises_one_line(np.zeros((4, 4, 2), np.uint8), "shape")
    with pytest.raises(ImageError):
        load_image(12345)


def test_valid_file_is_not_modified(tmp_path):
    p = tmp_path / "ok.png"
    p.write_bytes(_encode(Image.fromarray(_noise()), "PNG"))
    before = (p.read_bytes(), p.stat().st_mtime_ns)
    photo = load_image(p)
    _assert_rgb8(photo, 48, 64)
    assert photo.path == p
    assert (p.read_bytes(), p.stat().st_mtime_ns) == before


# ---------------------------------------------------------------- inputs and modes


def test_sources_agree(tmp_path):
    rgb = _noise()
    data = _encode(Image.fromarray(rgb), "PNG")
    p = tmp_path / "a.png"
    p.write_bytes(data)
    for src in (p, str(p), data, bytearray(data), io.BytesIO(data), Image.fromarray(rgb), rgb):
        photo = load_image(src)
        _assert_rgb8(photo, 48, 64)
        np.testing.assert_array_equal(photo.rgb, rgb)
    assert load_image(str(p)).path == p
    assert load_image(data).path is None


def test_rgba_composited_over_white():
    a = np.zeros((4, 6, 4), np.uint8)
    a[..., :3] = (10, 200, 30)
    a[:, :3, 3] = 255  # opaque left half, transparent right half
    a[0, 0, 3] = 128
    for src in (a, Image.fromarray(a, "RGBA"), _encode(Image.fromarray(a, "RGBA"), "PNG")):
        rgb = load_image(src).rgb
        assert rgb.shape == (4, 6, 3)
        np.testing.assert_array_equal(rgb[1, 1], (10, 200, 30))
        np.testing.assert_array_equal(rgb[1, 4], (255, 255, 255))
        assert 120 < rgb[0, 0, 0] < 140  # half-way between 10 and 255


def test_grayscale_modes():
    g = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) % 256
    g8 = g.astype(np.uint8)
    for src in (
        Image.fromarray(g8, "L"),
        _encode(Image.fromarray(g8, "L"), "PNG"),
        Image.fromarray(g8, "L").convert("LA"),
        g8,
        g8[:, :, None],
    ):
        rgb = load_image(src).rgb
        assert rgb.shape == (48, 64, 3)
        np.testing.assert_array_equal(rgb[..., 0], g8)
        np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])
    bw = Image.fromarray(g8 > 127).convert("1")
    rgb = load_image(bw).rgb
    assert set(np.unique(rgb)) <= {0, 255}


def test_sixteen_bit():
    g16 = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    expect = np.rint(g16 / 257.0).astype(np.uint8)
    png16 = _encode(Image.fromarray(g16), "PNG")  # I;16 PNG
    assert Image.open(io.BytesIO(png16)).mode in ("I;16", "I")
    for src in (g16, Image.fromarray(g16), png16, Image.fromarray(g16.astype(np.int32), "I")):
        rgb = load_image(src).rgb
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
        assert np.abs(rgb[..., 0].astype(int) - expect).max() <= 1
    rgb16 = np.stack([g16, g16 // 2, g16 // 4], axis=-1)
    rgb = load_image(rgb16).rgb
    assert np.abs(rgb[..., 1].astype(int) - np.rint(g16 // 2 / 257.0)).max() <= 1


def test_float_and_bool_arrays():
    f = np.linspace(0, 1, 48 * 64 * 3, dtype=np.float32).reshape(48, 64, 3)
    rgb = load_image(f).rgb
    assert rgb.dtype == np.uint8 and rgb[0, 0, 0] == 0 and rgb[-1, -1, -1] == 255
    f64 = f.astype(np.float64) * 1.5 - 0.2  # out of range values clip
    assert load_image(f64).rgb.shape == (48, 64, 3)
    assert load_image(np.ones((3, 4), bool)).rgb.min() == 255


def test_palette():
    rgb = _noise(32, 40)
    pal = Image.fromarray(rgb).quantize(16)
    assert pal.mode == "P"
    for src in (pal, _encode(pal, "PNG"), _encode(pal, "GIF")):
        out = load_image(src).rgb
        assert out.shape == (32, 40, 3)
        np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    # palette with a transparent index composites over white
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])
    out = load_image(_encode(pal, "PNG", transparency=pal.info["transparency"])).rgb
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))


def test_cmyk():
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # pure red
    for src in (cmyk, _encode(cmyk, "JPEG", quality=95), _encode(cmyk, "TIFF")):
        out = load_image(src).rgb
        assert out.shape == (10, 20, 3)
        r, g, b = out[5, 10].astype(int)
        assert r > 200 and g < 60 and b < 60, (r, g, b)


# ---------------------------------------------------------------- EXIF


def _jpeg_with_exif(rgb, orientation=None, sub=None) -> bytes:
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    if sub:
        ifd = exif.get_ifd(EXIF_IFD)
        ifd.update(sub)
    return _encode(im, "JPEG", exif=exif, quality=95)


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((100, 200, 3), np.uint8)  # stored landscape, W=200 H=100
    a[:20, :40] = 255  # mark the stored top-left corner
    data = _jpeg_with_exif(a, orientation=6)  # 6: rotate 90 degrees clockwise to view
    p = tmp_path / "rot.jpg"
    p.write_bytes(data)
    photo = load_image(p)
    _assert_rgb8(photo, 200, 100)  # now portrait
    # the stored top-left corner ends up at the viewed top-right
    assert photo.rgb[:30, -15:].mean() > 200
    assert photo.rgb[:30, :15].mean() < 50
    assert p.read_bytes() == data
    # orientation 1 and an invalid value leave the image as stored
    assert load_image(_jpeg_with_exif(a, orientation=1)).rgb.shape == (100, 200, 3)
    assert load_image(_jpeg_with_exif(a, orientation=0)).rgb.shape == (100, 200, 3)


@pytest.mark.parametrize("orientation", [1, 6, 8, 3])
def test_exif_focal_35mm(orientation):
    a = _noise(300, 400)
    photo = load_image(_jpeg_with_exif(a, orientation, {FOCAL35: 28, FOCAL: 4.2}))
    expect = 28 * math.hypot(400, 300) / FULL_FRAME_DIAGONAL_MM  # 28 mm eq. -> 323.6 px
    assert photo.exif_focal_px == pytest.approx(expect, rel=1e-6)
    # a 75-degree-ish diagonal FOV for 28 mm: check the formula's meaning too
    diag_fov = 2 * math.degrees(math.atan(math.hypot(400, 300) / 2 / photo.exif_focal_px))
    assert diag_fov == pytest.approx(2 * math.degrees(math.atan(FULL_FRAME_DIAGONAL_MM / 2 / 28)))


def test_exif_focal_plane_resolution():
    a = _noise(300, 400)
    # 4 mm lens, 250 px/mm on a sensor whose full width the camera wrote as 4000 px;
    # this file is 400 px wide, so it was downscaled 10x: 4 * 250 / 10 = 100 px.
    tags = {FOCAL: 4.0, FP_XRES: 250.0, FP_UNIT: 4, PIX_X: 4000, PIX_Y: 3000}
    assert load_image(_jpeg_with_exif(a, 1, tags)).exif_focal_px == pytest.approx(100.0)
    # camera-size image, resolution in cm (unit 3): 4 mm * 2500 px/cm / 10 mm/cm = 1000 px
    tags = {FOCAL: 4.0, FP_XRES: 2500.0, FP_UNIT: 3, PIX_X: 400, PIX_Y: 300}
    assert load_image(_jpeg_with_exif(a, 6, tags)).exif_focal_px == pytest.approx(1000.0)
    # rotated photo whose writer swapped the pixel dimensions: still no rescale
    tags = {FOCAL: 4.0, FP_XRES: 2500.0, FP_UNIT: 3, PIX_X: 300, PIX_Y: 400}
    assert load_image(_jpeg_with_exif(a, 6, tags)).exif_focal_px == pytest.approx(1000.0)


def test_exif_focal_absent_or_unusable():
    a = _noise(300, 400)
    assert load_image(_jpeg_with_exif(a)).exif_focal_px is None
    assert load_image(a).exif_focal_px is None
    # focal length alone: sensor size unknown
    assert load_image(_jpeg_with_exif(a, 1, {FOCAL: 4.2})).exif_focal_px is None
    # focal-plane resolution without the camera's pixel dimensions (resized export)
    tags = {FOCAL: 88.0, FP_XRES: 2413.3, FP_UNIT: 3}
    assert load_image(_jpeg_with_exif(a, 1, tags)).exif_focal_px is None
    # zero / absurd values
    assert load_image(_jpeg_with_exif(a, 1, {FOCAL35: 0})).exif_focal_px is None
    assert exif_focal_px({FOCAL35: 50000}, (400, 300)) is None
    assert exif_focal_px({FOCAL35: (56, 2)}, (400, 300)) == pytest.approx(
        28 * 500 / FULL_FRAME_DIAGONAL_MM
    )


def test_dev_photos_load(dev_data):
    photo = load_image(dev_data / "hamer" / "test5.jpg")
    _assert_rgb8(photo, 1799, 1200)
    # test1 carries a stale focal-plane resolution from a resized export
    assert load_image(dev_data / "hamer" / "test1.jpg").exif_focal_px is None
