"""One bad input never stops a batch: any exception of one photo or video becomes its `error` line
(KeyboardInterrupt still ends the run). Detector and fit are stubs: no model runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from handfit.batch import runner, stages
from stand_ins import StandIn


class _Det(StandIn):
    """A detector that fails on photos whose first pixel is 200 and finds nothing elsewhere."""

    interrupt = False

    def __init__(self, *a, **kw):
        pass

    def detect(self, rgb, mode=None):
        if rgb[0, 0, 0] == 200:
            if self.interrupt:
                raise KeyboardInterrupt
            raise RuntimeError("mediapipe graph failure")
        return []


def _fit(photos, detections, options):
    from handfit.api import FitResult

    return [FitResult(image_path=None, width=p.rgb.shape[1], height=p.rgb.shape[0], K=np.eye(3), model="mano",
                      hands=[]) for p in photos]


def _photos(d, values):
    d.mkdir()
    for name, v in values.items():
        Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(d / f"{name}.png")
    return d


def _summary(out):
    return {r["key"]: r for r in map(json.loads, (out / "summary.jsonl").read_text().splitlines())}


def test_detection_and_write_failures_become_error_lines(tmp_path, monkeypatch):
    monkeypatch.setattr("handfit.detect.Detector", _Det)
    d = _photos(tmp_path / "in", {"a": 10, "b": 200, "c": 20, "d": 30})
    real_write = stages.write_photo

    def write(job, unit, result, record):
        if unit.key == "c":
            raise ValueError("cannot encode overlay")
        return real_write(job, unit, result, record)

    monkeypatch.setattr(stages, "write_photo", write)
    rep = runner.run_batch([d], tmp_path / "out", batch_size=2, fit=_fit, gallery=False)
    by = _summary(tmp_path / "out")
    assert sorted(by) == ["a", "b", "c", "d"] and rep.computed == 4
    assert by["a"]["status"] == by["d"]["status"] == "no_hand"
    assert by["b"]["status"] == "error" and "RuntimeError: mediapipe graph failure" in by["b"]["message"]
    assert by["c"]["status"] == "error" and "ValueError: cannot encode overlay" in by["c"]["message"]


def test_keyboard_interrupt_still_ends_the_batch(tmp_path, monkeypatch):
    monkeypatch.setattr("handfit.detect.Detector", type("D", (_Det,), {"interrupt": True}))
    d = _photos(tmp_path / "in", {"a": 200})
    with pytest.raises(KeyboardInterrupt):
        runner.run_batch([d], tmp_path / "out", fit=_fit, gallery=False)


def test_a_failing_video_is_an_error_line(tmp_path, monkeypatch):
    from handfit.batch import video
    from handfit.batch.inputs import Unit

    def boom(*a, **kw):
        raise IndexError("list index out of range")

    monkeypatch.setattr(video, "run_video", boom)
    from handfit.batch.records import BatchJob

    job = BatchJob(out=tmp_path)
    rec = video.process_video(Unit("video", "v.mp4", "v"), job, "run")
    assert rec["status"] == "error" and "IndexError" in rec["message"] and rec["key"] == "v"

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "run_video", interrupt)
    with pytest.raises(KeyboardInterrupt):
        video.process_video(Unit("video", "v.mp4", "v"), job, "run")
