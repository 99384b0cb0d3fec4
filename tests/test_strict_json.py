"""Every JSON and JSONL file handfit writes is strict JSON: ``null``, never ``NaN`` or ``Infinity``."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest

from handfit.io.jsonfile import dumps, strict
from stand_ins import truth_detector


def strict_loads(text: str):
    """``json.loads`` that rejects NaN, Infinity and -Infinity, as JavaScript's JSON.parse does."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def check_files(folder: Path) -> int:
    """Parse every .json file and every line of every .jsonl file under ``folder`` strictly. -> files read"""
    n = 0
    for path in sorted(folder.rglob("*.json*")):
        if path.suffix == ".json":
            strict_loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                strict_loads(line)
        else:
            continue
        n += 1
    return n


def test_strict_maps_non_finite_numbers_to_null():
    doc = {"a": float("nan"), "b": [1.5, float("inf"), -float("inf"), np.float32(np.nan), np.float64(2.25)],
           "c": {"d": (np.float32(0.5), np.array([1.0, np.nan])), "e": np.array([[np.inf, 3]])},
           "f": 3, "g": "NaN", "h": None, "i": True, "j": np.int64(7)}
    text = dumps(doc, default=lambda o: int(o) if isinstance(o, np.integer) else str(o))
    assert strict_loads(text) == {"a": None, "b": [1.5, None, None, None, 2.25],
                                  "c": {"d": [0.5, [1.0, None]], "e": [[None, 3.0]]},
                                  "f": 3, "g": "NaN", "h": None, "i": True, "j": 7}
    # finite numbers keep their digits: the same text as json.dumps
    finite = {"x": [0.1, 1e-7, 123456.789, np.float64(1 / 3)], "y": np.float32(0.1)}
    assert dumps(finite) == json.dumps({"x": finite["x"], "y": float(np.float32(0.1))})
    assert dumps([1.0, 2.0], indent=1, separators=(",", ":")) == json.dumps([1.0, 2.0], indent=1, separators=(",", ":"))
    # what ``default`` returns is made strict too
    assert strict_loads(dumps({"o": object()}, default=lambda o: [float("nan")])) == {"o": [None]}
    assert strict(np.nan) is None and strict(-math.inf) is None and strict(2.0) == 2.0


def test_writers_use_strict_json(tmp_path):
    """result.json, a batch's status.json, summary line and shard manifest, eval's metrics.json,
    pck.json and predictions.json, each given non-finite numbers."""
    from handfit.batch import store
    from handfit.eval.report import write_report
    from handfit.io.export import to_json, write_json

    nan = float("nan")
    assert strict_loads(to_json({"metrics": {"jitter": np.float32(np.nan)}, "K": np.full((2, 2), np.inf)})) == {
        "metrics": {"jitter": None}, "K": [[None, None], [None, None]]}
    write_json(tmp_path / "result.json", {"x": nan})
    assert strict_loads(store.dumps({"tracks": [{"jitter_mm": nan}], "fps": np.float64(np.inf)})) == {
        "tracks": [{"jitter_mm": None}], "fps": None}
    store.write_manifest(tmp_path, 1, 1, [], complete=True)
    from handfit.eval.run import SUMMARY_KEYS

    summary = {"dense": {**{k: nan for k in SUMMARY_KEYS}, "n": 1, "pa_mpjpe_mm": np.float32(nan),
                         "accel_mm": {"mean": nan}}}
    ev = types.SimpleNamespace(summary=summary,
                               rows=[{"image": "a", "hand": 0, "dense_accel_mm": nan}], thresholds_mm=[0.0, 50.0],
                               curves={"dense": [nan, 1.0]}, hands=[])
    paths = write_report(ev, tmp_path / "eval", plot=False)
    assert strict_loads(paths["metrics"].read_text())["dense"]["accel_mm"] == {"mean": None}
    assert check_files(tmp_path) == 5


@pytest.mark.slow
def test_a_video_batch_writes_strict_json(tmp_path, monkeypatch):
    """A two-frame video: its track is too short for a jitter (NaN before: summary.jsonl and
    status.json were not JSON)."""
    from click.testing import CliRunner
    from test_batch_video import _synthetic_clip

    from handfit.cli import main

    truth, K = _synthetic_clip(tmp_path / "clip.mp4", n=2)
    TruthDetector, _ = truth_detector(truth)
    monkeypatch.setattr("handfit.detect.Detector", TruthDetector)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["batch", str(tmp_path / "clip.mp4"), "-o", str(out), "--kp-iters", "10",
                                  "--no-dense", "--views", "0", "--device", "cpu", "-q",
                                  "--intrinsics", f"{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}"])
    assert r.exit_code == 0, r.output
    (line,) = (out / "summary.jsonl").read_text().splitlines()
    rec = strict_loads(line)
    assert rec["status"] == "ok" and rec["frames"] == 2
    (track,) = rec["hand_metrics"]
    assert track["frames"] == 2 and track["jitter_mm"] is None and track["jitter_px"] is None
    assert strict_loads((out / "clip" / "status.json").read_text())["hand_metrics"][0]["jitter_mm"] is None
    assert check_files(out) >= 4      # summary.jsonl, status.json, two frames' result.json
