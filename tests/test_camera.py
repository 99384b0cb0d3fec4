"""handfit.camera: intrinsics, projection, square crops and their conventions."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from handfit.camera import (
    DEFAULT_FOV_DEG,
    Crop,
    crop_image,
    crop_intrinsics,
    default_focal,
    intrinsics,
    project,
    square_crop,
    to_crop,
    to_full,
)
from handfit.errors import UsageError


def _points(B=3, N=50, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(B, N, 2, generator=g, dtype=dtype) - 0.5) * 0.3
    z = 0.4 + torch.rand(B, N, 1, generator=g, dtype=dtype) * 0.4
    return torch.cat([xy, z], dim=-1)


# ---------------------------------------------------------------- intrinsics


def test_default_focal_long_side():
    f = default_focal(640, 480)
    assert DEFAULT_FOV_DEG == 60.0
    assert f == pytest.approx(320 / math.tan(math.radians(30)))
    # the FOV spans the longer side whichever way round the photo is
    assert default_focal(480, 640) == pytest.approx(f)
    fov = 2 * math.degrees(math.atan(640 / 2 / f))
    assert fov == pytest.approx(60.0)
    assert default_focal(100, 100, fov_deg=90) == pytest.approx(50.0)
    with pytest.raises(UsageError):
        default_focal(0, 10)
    with pytest.raises(UsageError):
        default_focal(10, 10, fov_deg=180)


def test_intrinsics_precedence_and_centre():
    W, H = 641, 480
    K = intrinsics(W, H)
    assert K.dtype == np.float64 and K.shape == (3, 3)
    assert K[0, 0] == K[1, 1] == pytest.approx(default_focal(W, H))
    assert (K[0, 2], K[1, 2]) == ((W - 1) / 2, (H - 1) / 2)
    np.testing.assert_array_equal(K[2], [0, 0, 1])
    assert K[0, 1] == K[1, 0] == 0
    assert intrinsics(W, H, exif_focal=900.0)[0, 0] == 900.0  # EXIF over default
    assert intrinsics(W, H, focal=1200.0, exif_focal=900.0)[0, 0] == 1200.0  # explicit wins
    assert intrinsics(W, H, focal=1200)[1, 1] == 1200.0
    for bad_exif in (None, 0.0, -5.0, float("nan"), float("inf")):
        assert intrinsics(W, H, exif_focal=bad_exif)[0, 0] == pytest.approx(default_focal(W, H))
    for bad in (0, -1.0, float("nan"), "abc"):
        with pytest.raises(UsageError):
            intrinsics(W, H, focal=bad)


# ---------------------------------------------------------------- projection


def test_project_values_and_shapes(dtype):
    K = intrinsics(640, 480, focal=500.0)
    X = torch.tensor([[[0.1, -0.05, 0.5], [0.0, 0.0, 2.0]]], dtype=dtype)
    uv = project(X, K)
    assert uv.shape == (1, 2, 2) and uv.dtype == dtype
    expect = torch.tensor([[[319.5 + 100.0, 239.5 - 50.0], [319.5, 239.5]]], dtype=dtype)
    torch.testing.assert_close(uv, expect)
    Kb = torch.as_tensor(np.stack([K, intrinsics(640, 480, focal=250.0)]), dtype=dtype)
    uvb = project(X.expand(2, -1, -1), Kb)
    torch.testing.assert_close(uvb[0], expect[0])
    torch.testing.assert_close(uvb[1, 0], torch.tensor([319.5 + 50.0, 239.5 - 25.0], dtype=dtype))


def test_project_matches_opencv():
    X = _points(1, 30)[0].numpy()
    K = intrinsics(800, 600, focal=700.0)
    ref, _ = cv2.projectPoints(X, np.zeros(3), np.zeros(3), K, None)
    np.testing.assert_allclose(project(torch.from_numpy(X)[None], K)[0].numpy(), ref[:, 0], atol=1e-9)


def test_project_differentiable_and_safe(device):
    X = _points(2, 10).to(device).requires_grad_(True)
    K = torch.as_tensor(intrinsics(640, 480), device=device)[None].expand(2, 3, 3)
    project(X, K).square().sum().backward()
    assert torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0
    Z = torch.tensor([[[0.1, 0.1, 0.0], [0.1, 0.1, -1.0]]], device=device, dtype=torch.float64)
    assert torch.isfinite(project(Z, K[:1])).all()


# ---------------------------------------------------------------- crops


def test_square_crop_geometry():
    c = square_crop([100, 50, 140, 130], scale=1.5, out_size=128)
    assert isinstance(c, Crop)
    assert c.size == pytest.approx(120.0)  # 1.5 x the longer side (80)
    assert c.center == pytest.approx((120.0, 90.0))
    assert c.out_size == 128 and c.scale == pytest.approx(120 / 128)
    with pytest.raises(UsageError):
        square_crop([10, 10, 5, 20])
    assert square_crop([5, 5, 5, 5]).size >= 1.0  # degenerate box still usable


def test_crop_projection_consistency(dtype):
    """Projecting with K_crop == projecting with K, then mapping into the crop."""
    K = intrinsics(1280, 960, exif_focal=1100.0)
    X = _points(2, 40, dtype=dtype)
    uv = project(X, K)
    box = [float(uv[0, :, 0].min()), float(uv[0, :, 1].min()), float(uv[0, :, 0].max()), float(uv[0, :, 1].max())]
    for crop in (square_crop(box, 1.4, 256), square_crop(box, 1.2, 64), Crop(-30.25, 12.5, 700.0, 224)):
        Kc = crop_intrinsics(K, crop)
        assert isinstance(Kc, np.ndarray) and Kc.shape == (3, 3)
        uv_c = project(X, Kc)
        tol = dict(atol=1e-6 if dtype == torch.float64 else 1e-3, rtol=1e-6 if dtype == torch.float64 else 1e-4)
        torch.testing.assert_close(to_full(uv_c, crop), uv, **tol)
        torch.testing.assert_close(to_crop(uv, crop), uv_c, **tol)
        # numpy in, numpy out; and the round trip
        uv_np = uv.double().numpy()
        np.testing.assert_allclose(to_full(to_crop(uv_np, crop), crop), uv_np, atol=1e-9)
        # torch intrinsics (batched) give the same
        Kt = torch.as_tensor(K, dtype=dtype)[None].expand(2, 3, 3)
        Kct = crop_intrinsics(Kt, crop)
        assert Kct.shape == (2, 3, 3) and Kct.dtype == dtype
        torch.testing.assert_close(project(X, Kct), uv_c, **tol)
    # the box centre maps to the crop's centre pixel position
    c = square_crop(box, 1.4, 256)
    centre = to_crop(np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]), c)
    np.testing.assert_allclose(centre, [127.5, 127.5], atol=1e-9)


def test_crop_image_integer_window_is_a_slice():
    rgb = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    # corner edge at (9.5, 19.5) and unit pixels: crop pixel (0,0) = full pixel (10, 20)
    out, valid = crop_image(rgb, Crop(9.5, 19.5, 32.0, 32))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and valid.all()
    np.testing.assert_array_equal(out, rgb[20:52, 10:42])
    np.testing.assert_allclose(to_full(np.array([0.0, 0.0]), Crop(9.5, 19.5, 32.0, 32)), [10, 20])


def test_crop_image_downscale_is_area_average():
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    # the whole image, edges at -0.5 .. 63.5, shrunk 4x
    out, valid = crop_image(rgb, Crop(-0.5, -0.5, 64.0, 16))
    ref = cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_AREA)
    assert valid.all()
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_crop_image_dot_lands_where_to_crop_says():
    rgb = np.zeros((200, 300, 3), np.uint8)
    u, v = 171, 64
    rgb[v, u] = 255
    for crop in (square_crop([150, 40, 190, 80], 1.3, 160), square_crop([100, 0, 260, 150], 1.1, 64)):
        out, _ = crop_image(rgb, crop)
        g = out[..., 0].astype(np.float64)
        ys, xs = np.mgrid[: g.shape[0], : g.shape[1]]
        centroid = np.array([(g * xs).sum(), (g * ys).sum()]) / g.sum()
        np.testing.assert_allclose(centroid, to_crop(np.array([u, v], float), crop), atol=0.35)


def test_crop_image_borders_and_mask():
    rgb = np.full((40, 50, 3), 100, np.uint8)
    crop = Crop(-25.5, -0.5, 50.0, 50)  # left half falls outside the image
    out_r, valid = crop_image(rgb, crop, border="replicate")
    out_c, valid_c = crop_image(rgb, crop, border="constant")
    np.testing.assert_array_equal(valid, valid_c)
    assert valid.shape == (50, 50) and valid.dtype == bool
    assert not valid[:, :25].any() and valid[:40, 25:].all() and not valid[40:].any()
    assert (out_r == 100).all()
    assert (out_c[~valid] == 0).all() and (out_c[valid] == 100).all()
    with pytest.raises(UsageError):
        crop_image(rgb, crop, border="wrap")
    gray, _ = crop_image(rgb[..., 0], crop)
    assert gray.shape == (50, 50)
