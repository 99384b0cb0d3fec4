"""handfit batch at scale: recursive inputs, the summary, resume after SIGKILL,
shards and merge, atomic folders, OOM splitting, the gallery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hand.jpg"
FAST = ["--no-dense", "--kp-iters", "20", "-q"]


def cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "HANDFIT_NO_FSYNC": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    return subprocess.run([sys.executable, "-m", "handfit.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, **kw)


def summary(out: Path, name="summary.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def temp_folders(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".handfit-tmp-")]


def done_folders(out: Path) -> list[Path]:
    """status.json of finished folders (temporary ones, named .handfit-tmp-*, are not finished)."""
    return [p for p in out.glob("*/status.json") if not p.parent.name.startswith(".")]


def messy_folder(root: Path) -> Path:
    """A folder with a subfolder of photos, an empty file and a truncated JPEG."""
    d = root / "in"
    (d / "sub" / "deeper").mkdir(parents=True)
    data = EXAMPLE.read_bytes()
    (d / "hand.jpg").write_bytes(data)
    (d / "sub" / "hand.jpg").write_bytes(data)            # same name, other folder: must not collide
    (d / "sub" / "deeper" / "second.jpg").write_bytes(data)
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "notes.txt.md").write_text("not an input")
    return d


# ---------------------------------------------------------------- inputs (fast, no fitting)


def test_collect_walks_recursively_in_stable_order(tmp_path):
    from handfit.batch.inputs import collect

    d = messy_folder(tmp_path)
    units = collect([d])
    keys = [u.key for u in units]
    assert keys == ["empty", "hand", "truncated", "sub/hand", "sub/deeper/second"]
    assert collect([d]) == units  # stable
    assert [u.key for u in collect([d], glob="sub/*")] == ["sub/hand", "sub/deeper/second"]
    assert [u.key for u in collect([d], glob="second.*")] == ["sub/deeper/second"]
    # a text file listing paths, relative to itself; colliding stems keep their extension
    (d / "hand.png").write_bytes(b"")
    lst = tmp_path / "list.txt"
    lst.write_text("# photos\nin/hand.jpg\n\nin/hand.png\nin/sub\n")
    keys = [u.key for u in collect([lst])]
    assert keys == ["in/hand.jpg", "in/hand.png", "hand", "deeper/second"]


def test_collect_keeps_namesakes_from_different_sources_apart(tmp_path):
    from handfit.batch.inputs import collect

    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "img.jpg").write_bytes(day.encode())
    units = collect([tmp_path / "day1", tmp_path / "day2"])
    assert [(Path(u.path).parent.name, u.key) for u in units] == [("day1", "day1/img"), ("day2", "day2/img")]
    # The same file found twice (its folder and itself) is one unit.
    again = collect([tmp_path / "day1", tmp_path / "day1" / "img.jpg", tmp_path / "day2"])
    assert [u.key for u in again] == ["day1/img", "day2/img"]
    # Two folders of the same name: the second label is told apart.
    for top in ("a", "b"):
        (tmp_path / top / "x").mkdir(parents=True)
        (tmp_path / top / "x" / "img.jpg").write_bytes(top.encode())
    keys = [u.key for u in collect([tmp_path / "a" / "x", tmp_path / "b" / "x"])]
    assert len(set(keys)) == 2 and keys == ["x/img", "x-2/img"]


def test_collect_never_nests_one_key_inside_another(tmp_path):
    from handfit.batch.inputs import collect

    d = tmp_path / "in"
    (d / "x").mkdir(parents=True)
    (d / "x.jpg").write_bytes(b"a")
    (d / "x" / "y.jpg").write_bytes(b"b")
    keys = [u.key for u in collect([d])]
    assert keys == ["x.jpg", "x/y"]                      # OUT/x.jpg/ next to OUT/x/y/, not around it
    for a in keys:
        assert not any(b.startswith(a + "/") for b in keys)


def test_commit_refuses_to_replace_a_folder_holding_other_results(tmp_path):
    from handfit.batch import store

    def fill(key):
        def f(folder):
            (folder / store.STATUS).write_text(json.dumps({"status": "ok", "key": key}))
        return f

    store.commit(tmp_path, "x/y", fill("x/y"), "s1of1")      # an earlier run wrote OUT/x/y
    with pytest.raises(FileExistsError, match="another input"):
        store.commit(tmp_path, "x", fill("x"), "s1of1")
    assert store.read_status(tmp_path / "x" / "y")["key"] == "x/y"
    assert not temp_folders(tmp_path) or store.clean_temps(tmp_path, None)
    store.commit(tmp_path, "x/y", fill("x/y"), "s1of1")      # replacing a result itself still works


def test_shards_are_disjoint_and_cover(tmp_path):
    from handfit.batch.inputs import Unit, parse_shard, shard

    units = [Unit("photo", f"p{i}.jpg", f"k{i:03d}") for i in range(103)]
    for n in (1, 2, 3, 7, 200):
        parts = [shard(units, k, n) for k in range(1, n + 1)]
        keys = [u.key for p in parts for u in p]
        assert sorted(keys) == [u.key for u in units]          # covering, each exactly once
        assert len(set(keys)) == len(keys)                     # disjoint
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert parts == [shard(units, k, n) for k in range(1, n + 1)]  # deterministic
    assert parse_shard("2/5") == (2, 5)
    from handfit.errors import UsageError

    for bad in ("0/3", "4/3", "x", "1/0", "1/2/3"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_commit_is_atomic_and_temps_are_cleaned(tmp_path, monkeypatch):
    from handfit.batch import store

    def fill(folder):
        (folder / "a.txt").write_text("a")
        (folder / store.STATUS).write_text(json.dumps({"status": "ok", "key": "x/y"}))

    def boom(folder):
        (folder / "a.txt").write_text("half")
        raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        store.commit(tmp_path, "x/y", boom, "s1of1")
    assert not (tmp_path / "x" / "y").exists()               # nothing torn at the final place
    assert len(temp_folders(tmp_path)) == 1
    assert store.clean_temps(tmp_path, None) == 1 and not temp_folders(tmp_path)
    store.commit(tmp_path, "x/y", fill, "s1of1")
    assert store.read_status(tmp_path / "x" / "y")["status"] == "ok"
    # A kill between moving the old folder aside and renaming the new one in.
    real_rename = os.rename
    calls = []

    def rename(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        store.commit(tmp_path, "x/y", fill, "s1of1")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not (tmp_path / "x" / "y").exists() and temp_folders(tmp_path)
    store.clean_temps(tmp_path, None)
    assert not temp_folders(tmp_path)


def test_compact_survives_torn_and_repeated_lines(tmp_path):
    from handfit.batch import store
    from handfit.batch.inputs import Unit

    units = [Unit("photo", f"{k}.jpg", k) for k in "abc"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / store.STATUS).write_text(json.dumps({"key": "a", "status": "ok", "hands": 1}))
    log = tmp_path / "summary.jsonl"
    log.write_text('{"key":"b","status":"error","hands":0,"message":"first"}\n'
                   '{"key":"b","status":"error","hands":0,"message":"second"}\n'
                   '{"key":"a","status":"ok","hands":1}\n{"key":"c","sta')
    recs = store.compact(tmp_path, units, log)
    assert [r["key"] for r in recs] == ["a", "b", "c"]
    assert recs[1]["message"] == "second" and recs[2]["status"] == "error"
    assert [json.loads(x)["key"] for x in log.read_text().splitlines()] == ["a", "b", "c"]


def test_oom_splits_the_batch_and_retries(tmp_path):
    import torch

    from handfit.batch.stages import Prepared, fit_chunk
    from handfit.batch.inputs import Unit

    sizes = []

    def fake_fit(photos, detections, options):
        sizes.append(len(photos))
        if len(photos) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(p == "bad" for p in photos):
            raise RuntimeError("numerical failure")
        from types import SimpleNamespace

        return [SimpleNamespace(image_path=None, hands=[p]) for p in photos]

    items = [Prepared(Unit("photo", f"{i}.jpg", str(i)), photo=f"p{i}", detections=[]) for i in range(7)]
    items[5].photo = "bad"
    out = fit_chunk(items, None, fit=fake_fit)
    assert [p.unit.key for p, *_ in out] == [str(i) for i in range(7)]  # all kept, in order
    assert sizes[:2] == [7, 3] and 4 in sizes  # halves, retried
    errs = {p.unit.key: e for p, r, e, _ in out if e}
    assert list(errs) == ["5"] and "numerical failure" in errs["5"]
    assert all(r.hands == [f"p{i}"] for i, (p, r, e, _) in enumerate(out) if i != 5)

    def always_oom(photos, detections, options):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    out = fit_chunk(items[:3], None, fit=always_oom)
    assert all(e and "out of memory" in e for _, _, e, _ in out)


# ---------------------------------------------------------------- the command (real fits, few iterations)


@pytest.mark.slow
def test_batch_lists_every_input_and_resumes(tmp_path):
    d = messy_folder(tmp_path)
    out = tmp_path / "out"
    r = cli("batch", d, "-o", out, *FAST)
    assert r.returncode == 0, r.stderr
    recs = summary(out)
    by = {x["key"]: x for x in recs}
    assert sorted(by) == sorted(["empty", "hand", "truncated", "sub/hand", "sub/deeper/second"])
    assert len(recs) == 5
    for k in ("hand", "sub/hand", "sub/deeper/second"):
        assert by[k]["status"] == "ok" and by[k]["hands"] == 1 and by[k]["seconds"] > 0, by[k]
        assert (out / k / "result.json").is_file() and (out / k / "overlay.png").is_file()
    assert by["empty"]["status"] == "error" and "empty" in by["empty"]["message"]
    assert by["truncated"]["status"] == "error" and "truncated" in by["truncated"]["message"]
    for x in recs:
        assert set(x) >= {"path", "status", "hands", "seconds", "message"}
    assert "empty.jpg" in r.stderr and "truncated.jpg" in r.stderr
    html = (out / "index.html").read_text()
    assert "sub/hand/overlay.png" in html and "http" not in html.replace("http-equiv", "")
    # A rerun computes nothing that is finished (the bad files are retried: cheap) ...
    stamp = {k: (out / k / "status.json").stat().st_mtime_ns for k in ("hand", "sub/hand")}
    r2 = cli("batch", d, "-o", out, *FAST)
    assert r2.returncode == 0 and "2 computed now" in r2.stderr, r2.stderr
    assert stamp == {k: (out / k / "status.json").stat().st_mtime_ns for k in stamp}
    assert summary(out) == recs or [x["key"] for x in summary(out)] == [x["key"] for x in recs]
    # ... and --overwrite recomputes.
    r3 = cli("batch", d, "-o", out, "--overwrite", *FAST)
    assert r3.returncode == 0 and "5 computed now" in r3.stderr
    assert stamp["hand"] != (out / "hand" / "status.json").stat().st_mtime_ns
    assert not temp_folders(out)


@pytest.mark.slow
def test_exit_codes_3_and_4(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"")
    (d / "b.png").write_text("text")
    r = cli("batch", d, "-o", tmp_path / "o1", *FAST)
    assert r.returncode == 4, r.stderr
    assert len(summary(tmp_path / "o1")) == 2
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(d / "blank.png")
    r = cli("batch", d, "-o", tmp_path / "o2", *FAST)
    assert r.returncode == 3, r.stderr
    assert {x["status"] for x in summary(tmp_path / "o2")} == {"error", "no_hand"}


@pytest.mark.slow
def test_sigkill_midway_then_rerun_completes(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(8):
        (d / f"img{i}.jpg").write_bytes(EXAMPLE.read_bytes())
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "handfit.cli", "batch", str(d), "-o", str(out),
                             "--batch-size", "1", *FAST], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Kill once two results are committed (polled: no fixed sleep window; 6 photos are still to fit).
    deadline = time.time() + 600
    try:
        while proc.poll() is None and len(done_folders(out)) < 2:
            assert time.time() < deadline, "no two finished result folders within 600 s"
            time.sleep(0.05)
        assert proc.poll() is None, f"the batch ended (exit {proc.returncode}) before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {p.parent.name: (p.stat().st_ino, json.loads(p.read_text())["run"]) for p in done_folders(out)}
    assert 2 <= len(finished) < 8
    r = cli("batch", d, "-o", out, "--batch-size", "1", *FAST)
    assert r.returncode == 0, r.stderr
    assert f"{8 - len(finished)} computed now" in r.stderr, r.stderr
    recs = summary(out)
    assert sorted(x["key"] for x in recs) == [f"img{i}" for i in range(8)]    # every input exactly once
    assert all(x["status"] == "ok" for x in recs)
    assert not temp_folders(out)
    for key, (ino, run) in finished.items():                                  # nothing finished recomputed
        st = out / key / "status.json"
        assert (st.stat().st_ino, json.loads(st.read_text())["run"]) == (ino, run)
    runs = {x["run"] for x in recs}
    assert len(runs) == 2


@pytest.mark.slow
def test_shards_then_merge_equal_one_run(tmp_path):
    d = messy_folder(tmp_path)
    out = tmp_path / "sharded"
    codes = [cli("batch", d, "-o", out, "--shard", f"{k}/3", *FAST).returncode for k in (1, 2, 3)]
    assert set(codes) <= {0, 3, 4}
    parts = [summary(out, f"summary-{k}-of-3.jsonl") for k in (1, 2, 3)]
    keys = [x["key"] for p in parts for x in p]
    assert sorted(keys) == sorted(["empty", "hand", "truncated", "sub/hand", "sub/deeper/second"])
    r = cli("merge", out)
    assert r.returncode == 0, r.stderr
    merged = summary(out)
    assert sorted(x["key"] for x in merged) == sorted(keys)
    assert {x["key"]: x["status"] for x in merged}["sub/hand"] == "ok"
    assert (out / "index.html").is_file()


@pytest.mark.slow
def test_ray_engine_gives_the_same_summary(tmp_path):
    pytest.importorskip("ray.data", exc_type=ImportError)  # pyarrow 26 raises ImportError with numpy 1.x
    d = messy_folder(tmp_path)
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    r1 = cli("batch", d, "-o", local, "--batch-size", "2", *FAST)
    r2 = cli("batch", d, "-o", ray_out, "--batch-size", "2", "--engine", "ray", *FAST)
    assert r1.returncode == 0 and r2.returncode == 0, r2.stderr[-3000:]
    keep = ("path", "key", "kind", "status", "hands", "message")

    def norm(recs, root):
        return [{k: (str(Path(x[k]).relative_to(root)) if k == "path" else x[k]) for k in keep} for x in recs]

    a, b = norm(summary(local), tmp_path), norm(summary(ray_out), tmp_path)
    assert a == b and len(a) == 5
    for x in summary(ray_out):
        if x["status"] == "ok":
            assert (ray_out / x["key"] / "result.json").is_file() and x["seconds"] > 0
    assert not temp_folders(ray_out)


def test_gallery_writers_never_share_a_temporary_file(tmp_path, monkeypatch):
    from handfit.batch import gallery

    real_replace = os.replace
    nested = []

    def replace(src, dst):
        if not nested:  # another shard writes the gallery between this one's write and rename
            nested.append(1)
            gallery.write_gallery(tmp_path, [{"key": "b", "path": "b.jpg", "status": "error", "message": "x"}])
        real_replace(src, dst)

    monkeypatch.setattr(gallery.os, "replace", replace)
    gallery.write_gallery(tmp_path, [{"key": "a", "path": "a.jpg", "status": "error", "message": "x"}])
    assert "a.jpg" in (tmp_path / "index.html").read_text()
    assert not temp_folders(tmp_path) and [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_a_shard_leaves_the_gallery_to_merge(tmp_path, monkeypatch):
    from handfit.batch import runner
    from handfit.batch.merge import merge

    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (d / name).write_bytes(b"")
    monkeypatch.setattr(runner, "run_local", lambda todo, job, log, run_id, fit=None: 0)
    for k in (1, 2):
        runner.run_batch([d], tmp_path / "out", shard_spec=f"{k}/2")
        assert not (tmp_path / "out" / "index.html").exists()
    merge(tmp_path / "out")
    assert (tmp_path / "out" / "index.html").is_file()
    runner.run_batch([d], tmp_path / "one")
    assert (tmp_path / "one" / "index.html").is_file()


def test_batch_help_says_where_results_go():
    from click.testing import CliRunner

    from handfit.cli import main

    r = CliRunner().invoke(main, ["batch", "--help"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "<image stem>" not in text
    assert "OUT/<its path relative to its input folder, without extension>/" in text


def test_merge_reports_a_shard_that_did_not_finish(tmp_path, monkeypatch):
    from handfit.batch import runner
    from handfit.batch.merge import merge

    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "e.jpg"):
        (d / name).write_bytes(b"")
    out = tmp_path / "out"
    runner.run_batch([d], out, shard_spec="1/2")                      # finishes (a, c: unreadable)

    def killed(todo, job, log, run_id, fit=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_local", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.run_batch([d], out, shard_spec="2/2")                  # killed before b, e were done
    records, problems = merge(out, gallery=False)
    assert [r["key"] for r in records] == ["a", "b", "c", "e"]        # every input has a line
    by = {r["key"]: r for r in records}
    assert "shard 2/2 did not finish" in by["b"]["message"] and "did not finish" in by["e"]["message"]
    assert problems == ["2/2: not finished, 2 of 2 inputs without a result"]


def test_ray_workers_get_one_thread_unless_asked(monkeypatch):
    from handfit.batch.ray_engine import _worker_env

    monkeypatch.setenv("OMP_NUM_THREADS", "16")        # what the CLI sets in the driver: every core
    monkeypatch.setenv("NUMBA_NUM_THREADS", "16")
    monkeypatch.delenv("HANDFIT_THREADS", raising=False)
    env = _worker_env()
    assert env["OMP_NUM_THREADS"] == env["NUMBA_NUM_THREADS"] == "1"
    monkeypatch.setenv("HANDFIT_THREADS", "3")
    assert _worker_env()["OMP_NUM_THREADS"] == "3"
