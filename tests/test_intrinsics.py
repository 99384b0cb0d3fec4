"""Full intrinsics: --intrinsics fx,fy,cx,cy, per-image K, off-centre principal points; handfit eval end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from handfit.camera import Crop, crop_intrinsics, intrinsics_matrix, project, to_crop
from handfit.cli import main
from handfit.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
DEV3D = Path(os.environ.get("HANDFIT_DEV3D_DATA", REPO.parent / "shared" / "data" / "dev3d"))


def test_intrinsics_matrix_and_options():
    K = intrinsics_matrix(500, 480, -60.5, 300)
    assert np.array_equal(K, [[500, 0, -60.5], [0, 480, 300], [0, 0, 1]])
    for bad in ((0, 1, 0, 0), (1, -1, 0, 0), (1, 1, float("nan"), 0)):
        with pytest.raises(UsageError):
            intrinsics_matrix(*bad)
    from handfit.api import FitOptions

    assert FitOptions(intrinsics=[500, 480, -60, 300]).intrinsics == (500.0, 480.0, -60.0, 300.0)
    with pytest.raises(UsageError):
        FitOptions(intrinsics=(500, 480, 3))


def test_cli_rejects_bad_intrinsics(tmp_path):
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    for bad in ("1,2,3", "0,1,2,3", "a,b,c,d", "1,1,nan,0"):
        r = CliRunner().invoke(main, ["fit", str(img), "--intrinsics", bad])
        assert r.exit_code == 2 and "--intrinsics" in r.output, bad


def test_crops_with_principal_point_outside_the_image():
    # dev3d crops have principal points at x = -60 or 267 px in 256-px images: the crop intrinsics,
    # the crop mapping and the clip-space conversion must agree there too.
    from handfit.render import camera_to_clip

    K = torch.tensor(intrinsics_matrix(481.5, 470.0, -60.6, 267.0))
    X = torch.randn(1, 50, 3, dtype=torch.float64) * 0.05 + torch.tensor([0.1, -0.1, 0.45], dtype=torch.float64)
    uv = project(X, K)
    crop = Crop(x0=10.0, y0=-20.0, size=180.0, out_size=128)
    Kc = crop_intrinsics(K, crop)
    assert torch.allclose(project(X, Kc), to_crop(uv, crop), atol=1e-9)
    clip = camera_to_clip(X, Kc[None], (128, 128))
    uc = project(X, Kc)
    assert torch.allclose(clip[..., 0] / clip[..., 3], 2 * (uc[..., 0] + 0.5) / 128 - 1, atol=1e-9)
    assert torch.allclose(clip[..., 1] / clip[..., 3], 2 * (uc[..., 1] + 0.5) / 128 - 1, atol=1e-9)


@pytest.mark.slow
@pytest.mark.devdata
def test_fit_uses_the_given_intrinsics(tmp_path):
    r = CliRunner().invoke(main, ["fit", str(REPO / "examples" / "hand.jpg"), "-o", str(tmp_path), "-q",
                                  "--no-dense", "--kp-iters", "3", "--focal", "999",
                                  "--intrinsics", "700,650,-30.5,412"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "hand" / "result.json").read_text())
    assert np.allclose(doc["camera"]["K"], [[700, 0, -30.5], [0, 650, 412], [0, 0, 1]])


@pytest.mark.slow
@pytest.mark.devdata
def test_eval_cli_on_dev3d(tmp_path):
    if not DEV3D.is_dir():
        pytest.skip(f"dev3d data not found at {DEV3D}")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["eval", str(DEV3D), "--compare", "--limit", "1", "-o", str(out), "-q",
                                  "--kp-iters", "5", "--dense-iters", "2", "--texture-iters", "1", "--save-fits"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc) == ["mediapipe", "keypoint", "dense"]
    assert all(v["n"] == 1 and v["recall"] == 1.0 and 0 < v["pa_mpjpe_mm"] < 50 for v in doc.values())
    assert (out / "per_image.csv").is_file() and (out / "pck.png").is_file()
    (fit,) = list((out / "fits").glob("*/result.json"))
    label = json.loads(sorted(DEV3D.rglob("*.gt.json"))[0].read_text())
    assert np.allclose(json.loads(fit.read_text())["camera"]["K"], label["K"])  # the label's camera, not a guess


def test_intrinsics_option_takes_four_numbers_or_a_3x3_k():
    """One name, one meaning: FitOptions.intrinsics (and so --intrinsics) is (fx, fy, cx, cy),
    given as those four numbers or as a 3x3 K (nine numbers row by row, no skew)."""
    from handfit.options import FitOptions, OptionError

    K = [[500.0, 0.0, 100.0], [0.0, 510.0, 90.0], [0.0, 0.0, 1.0]]
    want = (500.0, 510.0, 100.0, 90.0)
    assert FitOptions(intrinsics=K).intrinsics == want
    assert FitOptions(intrinsics=np.asarray(K)).intrinsics == want
    assert FitOptions.from_values({"intrinsics": "500,0,100,0,510,90,0,0,1".split(",")}).intrinsics == want
    assert FitOptions(intrinsics=want).intrinsics == want
    for bad in ([[500.0, 2.0, 100.0], [0.0, 510.0, 90.0], [0.0, 0.0, 1.0]], (500.0, 510.0, 100.0), (-1, 1, 0, 0)):
        with pytest.raises(OptionError):
            FitOptions(intrinsics=bad)
