"""Symbolic links: eval and batch descend into linked folders and read linked files; link loops end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from handfit.batch.inputs import collect
from handfit.eval.datasets import detect_format, open_dataset, read_runs
from handfit.io.walk import files_under, walk

REPO = Path(__file__).resolve().parents[1]
DEV3D_SEQ = Path(os.environ.get("HANDFIT_DEV3D_SEQ_DATA", REPO.parent / "shared" / "data" / "dev3d_seq"))
RUNS = ("run01_00026-00029", "run04_00173-00176")   # two short runs (4 frames each)


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_walk_follows_links_and_ends_on_loops(tmp_path):
    real = tmp_path / "real"
    _touch(real / "a" / "x.jpg")
    _touch(real / "b.jpg")
    top = tmp_path / "top"
    _touch(top / "own.jpg")
    (top / "linked").symlink_to(real, target_is_directory=True)
    (top / "linked_file.jpg").symlink_to(real / "b.jpg")
    (top / "linked" / "a" / "up").symlink_to(top, target_is_directory=True)   # a loop: real/a/up -> top
    (top / "again").symlink_to(real / "a", target_is_directory=True)          # real/a a second time
    (top / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    folders = [Path(f).relative_to(top).as_posix() for f, _, _ in walk(top)]
    assert folders == [".", "again", "linked"]          # real/a once (first by name), the loop cut
    assert [p.relative_to(top).as_posix() for p in files_under(top, ".jpg")] == [
        "again/x.jpg", "broken.jpg", "linked/b.jpg", "linked_file.jpg", "own.jpg"]
    # a folder that links to itself
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "self").symlink_to(loop, target_is_directory=True)
    assert [f for f, _, _ in walk(loop)] == [str(loop)]


def test_batch_lists_linked_folders_and_files(tmp_path):
    real = tmp_path / "cams"
    _touch(real / "cam1" / "a.jpg")
    _touch(real / "cam1" / "sub" / "b.png")
    _touch(real / "cam2" / "clip.mp4")
    _touch(real / "c.jpg")
    inputs = tmp_path / "in"
    _touch(inputs / "own.jpg")
    (inputs / "cam1").symlink_to(real / "cam1", target_is_directory=True)
    (inputs / "cam2").symlink_to(real / "cam2", target_is_directory=True)
    (inputs / "c.jpg").symlink_to(real / "c.jpg")
    (inputs / "cam1" / "sub" / "back").symlink_to(inputs, target_is_directory=True)   # a loop
    (inputs / ".hidden").symlink_to(real, target_is_directory=True)                    # hidden: skipped
    units = collect([inputs])
    assert [(u.kind, u.key) for u in units] == [("photo", "c"), ("photo", "own"), ("photo", "cam1/a"),
                                                ("photo", "cam1/sub/b"), ("video", "cam2/clip")]
    assert units[2].path == str(inputs / "cam1" / "a.jpg")        # the path as found, through the link
    # a folder holding only a link to the input folder: its files once
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "in").symlink_to(inputs, target_is_directory=True)
    assert [u.key for u in collect([outer])] == [f"in/{u.key}" for u in units]


def _linked_runs(tmp_path) -> Path:
    runs = sorted((DEV3D_SEQ).rglob("run*"))
    if not runs:
        pytest.skip(f"dev3d_seq data not found at {DEV3D_SEQ}")
    by_name = {p.name: p for p in runs}
    links = tmp_path / "linked_runs"
    links.mkdir()
    for name in RUNS:
        (links / name).symlink_to(by_name[name], target_is_directory=True)
    return links


def test_eval_reads_a_folder_of_linked_runs(tmp_path):
    links = _linked_runs(tmp_path)
    assert detect_format(links) == "dev3d"             # was "no known dataset layout"
    runs = read_runs(links)                            # was "no labelled image (<image>.gt.json) found"
    assert [name for name, _ in runs] == list(RUNS)
    for name, frames in runs:
        real = next(p for p in DEV3D_SEQ.rglob(name))
        truth = dict(read_runs(real.parent))[name]
        assert [r.image.name for r in frames] == [r.image.name for r in truth] and len(frames) == 4
        assert all(r.image.parent == links / name for r in frames)
    assert len(list(open_dataset(links))) == 8
    (links / "loop").symlink_to(links, target_is_directory=True)       # a loop: read once, then cut
    assert [name for name, _ in read_runs(links)] == list(RUNS)


@pytest.mark.slow
def test_eval_command_over_linked_runs(tmp_path):
    from click.testing import CliRunner

    from handfit.cli import main

    links = _linked_runs(tmp_path)
    out = tmp_path / "out"
    args = [str(links), "--sequence", "--no-dense", "--kp-iters", "5", "--views", "0", "--detect", "fast",
            "--device", "cpu", "-q", "-o", str(out)]
    r = CliRunner().invoke(main, ["eval", *args])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["sequence_keypoint"]["n"] == 8
    hands = json.loads((out / "predictions.json").read_text())["hands"]
    assert sorted({h["run"] for h in hands}) == list(RUNS)
