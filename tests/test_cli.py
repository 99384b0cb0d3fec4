"""The CLI's exit codes, outputs and error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from handfit.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hand.jpg"


def run_cli(*args, cwd=None):
    """Run handfit in a subprocess, as a user would. -> CompletedProcess"""
    return subprocess.run([sys.executable, "-m", "handfit.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_help_and_version():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and "fit" in r.output and "batch" in r.output
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "handfit" in r.output
    r = CliRunner().invoke(main, ["fit", "--help"])
    assert r.exit_code == 0 and "--no-dense" in r.output and "--mano" in r.output
    assert "--no-appearance" not in r.output  # the stage's old name: a hidden alias


def test_each_command_says_what_its_out_folder_holds():
    """The shared -o/--out takes each command's default folder and help (common_options' parameters)."""
    import importlib

    cli = {name: importlib.import_module(f"handfit.cli.{name}") for name in ("fit", "batch", "eval")}

    def out(cmd):
        return next(p for p in cmd.params if p.name == "outdir")

    assert out(cli["fit"].fit).default == "handfit_out" and "OUT/<image stem>/" in out(cli["fit"].fit).help
    assert out(cli["batch"].batch).default == "handfit_out"
    assert "relative to its input folder" in out(cli["batch"].batch).help
    assert out(cli["eval"].eval_command).default == "handfit_eval"
    assert "predictions.json" in out(cli["eval"].eval_command).help
    for cmd in (cli["fit"].fit, cli["batch"].batch, cli["eval"].eval_command):
        assert {"quiet", "fit_dense__enabled", "fit_weights"} <= {p.name for p in cmd.params}


def test_usage_errors_exit_2(tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert CliRunner().invoke(main, ["fit", str(img), "--max-hands", "0"]).exit_code == 2
    assert CliRunner().invoke(main, ["fit", str(img), "--device", "tpu"]).exit_code == 2
    assert CliRunner().invoke(main, ["nonsense"]).exit_code == 2
    assert CliRunner().invoke(main, ["fit"]).exit_code == 2
    for bad in ("nosuchterm=1", "silhouette", "silhouette=-1", "silhouette=abc", "kp.photo=1"):
        r = CliRunner().invoke(main, ["fit", str(img), "--weight", bad])
        assert r.exit_code == 2 and "--weight" in r.output, bad


def test_fit_flags_reach_the_options():
    """Every fit flag lands on its FitOptions field; --help defaults are the library's."""
    from handfit.cli.common import FIT_FLAGS, fit_option_flags, fit_options
    from handfit.options import DenseWeights, FitOptions, option_field

    seen = {}

    @click.command()
    @fit_option_flags
    def probe(**params):
        seen["opts"] = fit_options(params)
        seen["rest"] = params

    args = ["--device", "cpu", "--kp-iters", "300", "--dense-iters", "50", "--texture-iters", "7",
            "--photo-mask", "colour", "--weight", "silhouette=0", "--weight", "kp.kp3d=0.5",
            "--weight", "photo=2", "--focal", "500"]
    r = CliRunner().invoke(probe, args)
    assert r.exit_code == 0, r.output
    opts = seen["opts"]
    assert seen["rest"] == {}                        # every flag was consumed
    assert opts.dense.weights == DenseWeights(silhouette=0.0, photo=2.0)
    assert opts.keypoint.weights.kp3d == 0.5 and opts.dense.iters == 50 and opts.dense.photo_mask == "colour"
    assert opts.dense.texture_iters == 7 and opts.focal == 500 and opts.device == "cpu"
    CliRunner().invoke(probe, [])
    assert seen["opts"] == FitOptions()             # no flags: the library's defaults
    for flag, (path, _) in FIT_FLAGS.items():       # --help shows the library's defaults
        default = option_field(path)[1]
        opt = next(p for p in probe.params if flag in p.opts)
        assert opt.default == default, flag


def test_dense_switch_and_its_old_name():
    """--dense/--no-dense set dense.enabled; --no-appearance and FitOptions(appearance=False), the
    stage's old name, still switch it off."""
    import dataclasses

    from handfit.cli.common import fit_option_flags, fit_options
    from handfit.options import DenseStage, FitOptions

    seen = {}

    @click.command()
    @fit_option_flags
    def probe(**params):
        seen["opts"] = fit_options(params)

    for args, on in (([], True), (["--dense"], True), (["--no-dense"], False), (["--no-appearance"], False),
                     (["--dense", "--no-appearance"], False)):
        r = CliRunner().invoke(probe, args)
        assert r.exit_code == 0, r.output
        assert seen["opts"].dense.enabled is on and seen["opts"].appearance is None, args
    assert FitOptions().dense.enabled is True and DenseStage().enabled is True
    with pytest.warns(DeprecationWarning, match="dense.enabled"):
        opts = FitOptions(appearance=False)
    assert opts.dense.enabled is False and opts.appearance is None
    assert opts == FitOptions(dense=DenseStage(enabled=False))
    with pytest.warns(DeprecationWarning):
        opts = FitOptions.from_values({"appearance": False, "dense.iters": 5})
    assert opts.dense.enabled is False and opts.dense.iters == 5
    with pytest.warns(DeprecationWarning):
        assert FitOptions(appearance=True, dense=DenseStage(enabled=False)).dense.enabled is True
    base = FitOptions()
    with pytest.warns(DeprecationWarning):
        off = dataclasses.replace(base, appearance=False)
    assert off.dense.enabled is False and base.dense.enabled is True  # the original is not switched off


def test_dense_switch_takes_only_booleans():
    from handfit.options import FitOptions, OptionError

    with pytest.raises(OptionError, match=r"^dense\.enabled: must be true or false") as e:
        FitOptions.from_values({"dense.enabled": "no"})
    assert e.value.field == "dense.enabled"
    with pytest.raises(OptionError, match=r"^appearance: must be true or false"):
        FitOptions(appearance=0)


@pytest.mark.slow
def test_old_switch_turns_the_dense_stage_off(tmp_path, monkeypatch):
    """--no-appearance and FitOptions(appearance=False) really skip the stage (it is never called)."""
    import handfit
    import handfit.fitting.dense as dense

    def fail(*args, **kwargs):
        raise AssertionError("the dense stage ran")

    monkeypatch.setattr(dense, "fit_dense", fail)
    r = CliRunner().invoke(main, ["fit", str(EXAMPLE), "-o", str(tmp_path), "-q", "--no-appearance",
                                  "--kp-iters", "3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    hand = json.loads((tmp_path / "hand" / "result.json").read_text())["hands"][0]
    assert set(hand["losses"]) == {"keypoint"} and "dense_iters" not in hand["metrics"]
    with pytest.warns(DeprecationWarning):
        opts = handfit.FitOptions(appearance=False, device="cpu")
    opts.keypoint.iters = 3
    res = handfit.fit(EXAMPLE, options=opts)
    assert res.hands and all(set(h.losses) == {"keypoint"} for h in res.hands)


def test_library_errors_name_the_field_and_the_cli_the_flag(tmp_path):
    from handfit.options import FitOptions, OptionError

    with pytest.raises(OptionError, match=r"^dense\.photo_mask: must be one of") as e:
        FitOptions.from_values({"dense.photo_mask": "nope"})
    assert e.value.field == "dense.photo_mask"
    with pytest.raises(OptionError, match=r"^keypoint\.iters: must be >= 1"):
        FitOptions.from_values({"keypoint.iters": 0})
    with pytest.raises(OptionError, match=r"^dense\.nope: no such option"):
        FitOptions.from_values({"dense.nope": 1})
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    r = CliRunner().invoke(main, ["fit", str(img), "--weight", "kp.nope=1"])
    assert r.exit_code == 2 and "--weight: 'kp.nope=1'" in r.output


def test_cli_imports_nothing_from_fitting():
    """The CLI stands on the library's options, not on the fitting code."""
    import ast

    import handfit.cli

    files = sorted(Path(handfit.cli.__file__).parent.glob("*.py"))
    assert len(files) > 3
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "fitting" not in (node.module or ""), (f.name, node.module)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated"])
def test_unreadable_input_exit_4(tmp_path, kind):
    p = tmp_path / "bad.jpg"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not an image\n")
    elif kind == "truncated":
        good = tmp_path / "good.jpg"
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(good)
        data = good.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    before = p.read_bytes() if p.exists() else None
    r = run_cli("fit", p, "-o", tmp_path / "out")
    assert r.returncode == 4, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("handfit: error:"), r.stderr
    assert "Traceback" not in r.stderr
    if before is not None:
        assert p.read_bytes() == before  # nothing lost


def test_no_hand_exit_3_writes_empty_result(tmp_path):
    img = tmp_path / "blank.png"
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(img)
    r = CliRunner().invoke(main, ["fit", str(img), "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 3
    doc = json.loads((tmp_path / "out" / "blank" / "result.json").read_text())
    assert doc["hands"] == [] and doc["image"]["width"] == 320


@pytest.mark.slow
def test_fit_example_writes_every_file(tmp_path):
    r = CliRunner().invoke(main, ["fit", str(EXAMPLE), "-o", str(tmp_path), "-q", "--json"])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "hand"
    doc = json.loads((folder / "result.json").read_text())
    assert len(doc["hands"]) >= 1
    for h in doc["hands"]:
        assert h["side"] in ("left", "right")
        assert np.asarray(h["keypoints_2d_fitted"]).shape == (21, 2)
        assert np.asarray(h["keypoints_3d"]).shape == (21, 3)
        for key in ("obj", "mtl", "texture", "glb", "params"):
            assert (folder / h["files"][key]).is_file(), key
    assert (folder / doc["overlay"]).is_file()
    # --json printed the same document to stdout
    assert json.loads(r.stdout)["model"] == doc["model"]


def test_library_face():
    import handfit

    assert callable(handfit.fit) and callable(handfit.fit_batch)
    import handfit.fitting.losses  # noqa: F401  (importing a subpackage must not shadow the function)

    assert callable(handfit.fit)


@pytest.mark.slow
def test_no_dense_skips_dense_stage(tmp_path):
    r = CliRunner().invoke(main, ["fit", str(EXAMPLE), "-o", str(tmp_path), "-q", "--no-dense"])
    assert r.exit_code == 0, r.output
    hand = json.loads((tmp_path / "hand" / "result.json").read_text())["hands"][0]
    assert "dense" not in hand["losses"] and "dense_iters" not in hand["metrics"]
    assert "keypoint" in hand["losses"]
    # The default run does have the dense stage, and it lowers the photometric error.
    full = CliRunner().invoke(main, ["fit", str(EXAMPLE), "-o", str(tmp_path / "full"), "-q"])
    assert full.exit_code == 0, full.output
    hand = json.loads((tmp_path / "full" / "hand" / "result.json").read_text())["hands"][0]
    assert hand["metrics"]["dense_iters"] >= 1
    assert set(hand["losses"]) == {"keypoint", "dense"}
    assert hand["metrics"]["photometric_after"] < hand["metrics"]["photometric_before"]


@pytest.mark.slow
def test_batch_skips_unreadable_files(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "hand.jpg").write_bytes(EXAMPLE.read_bytes())
    (folder / "broken.jpg").write_text("not an image")
    r = run_cli("batch", folder, "-o", tmp_path / "out", "-q", "--no-dense")
    assert r.returncode == 0, r.stderr
    assert "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    lines = [json.loads(x) for x in (tmp_path / "out" / "summary.jsonl").read_text().splitlines()]
    assert [(x["key"], x["status"]) for x in lines] == [("broken", "error"), ("hand", "ok")]
    doc = json.loads((tmp_path / "out" / "hand" / "result.json").read_text())
    assert len(doc["hands"]) == 1
    assert not (tmp_path / "out" / "broken").exists()
