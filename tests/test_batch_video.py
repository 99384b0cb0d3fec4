"""Videos in a batch: frame selection with PyAV, tracking, smoothing, and the dev clip end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from stand_ins import StandIn, truth_detector

REPO = Path(__file__).resolve().parents[1]


def make_clip(path: Path, n: int = 12, fps: int = 10):
    """A small clip whose frame i has mean brightness 10*i (to check which frames were read)."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            img = np.full((48, 64, 3), 10 * i, np.uint8)
            for pkt in s.encode(__import__("av").VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def _counting_reader(real_read):
    """A stand-in for media.read_frames that yields the same frames and records in
    peak[0] how many of them were alive at once. -> (reader, peak)"""
    import gc
    import weakref

    alive, peak = [], [0]

    def read_frames(*a, **kw):
        for idx, sec, rgb in real_read(*a, **kw):
            gc.collect()
            alive[:] = [r for r in alive if r() is not None]
            peak[0] = max(peak[0], len(alive))
            alive.append(weakref.ref(rgb))
            yield idx, sec, rgb

    return read_frames, peak


def test_read_frames_every_start_end(tmp_path):
    from handfit.batch.inputs import collect
    from handfit.io.media import read_frames, video_info

    clip = tmp_path / "clip.mp4"
    make_clip(clip)
    assert abs(video_info(clip).fps - 10) < 1e-6
    got = list(read_frames(clip, every=3, start=2, end=11))
    assert [i for i, _, _ in got] == [2, 5, 8]
    assert [round(t, 3) for _, t, _ in got] == [0.2, 0.5, 0.8]             # the source's clock is kept
    assert [round(float(rgb.mean()) / 10) for _, _, rgb in got] == [2, 5, 8]
    assert len(list(read_frames(clip))) == 12
    assert [(i, rgb) for i, _, rgb in read_frames(clip, every=4, pixels=False)] == [(0, None), (4, None), (8, None)]
    units = collect([tmp_path])
    assert [(u.kind, u.key) for u in units] == [("video", "clip")]
    from handfit.errors import ImageError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(ImageError):
        list(read_frames(bad))


def _det(side, x, y=100.0, s=80.0):
    from handfit.detect import Detection

    kp = np.stack([np.linspace(x, x + s, 21), np.linspace(y, y + s, 21)], 1)
    return Detection(side=side, score=0.9, box_xyxy=np.array([x, y, x + s, y + s]), keypoints=kp,
                     keypoints_z=np.zeros(21), world=np.zeros((21, 3)))


def test_tracking_links_moving_hands():
    """handfit.detect.tracking.track links detections by their predicted keypoints
    (handfit/detect/tracking.py; tests/test_tracking.py has crossings, side flips, mirrored hands)."""
    from handfit.detect.tracking import track
    from handfit.options import TrackStage

    frames = [[_det("right", 100 + 5 * f), _det("left", 400 - 5 * f)] for f in range(6)]
    frames[3] = [_det("left", 385)]                            # the right hand is missed once
    frames.append([_det("right", 130), _det("right", 600)])    # a second right hand appears far away
    tracks = track(frames)
    assert [(t.side, t.frames) for t in tracks] == [("right", [0, 1, 2, 4, 5, 6]), ("left", [0, 1, 2, 3, 4, 5]),
                                                    ("right", [6])]
    # A track survives max_missed missed frames (docs/batch.md: 3) ...
    k = TrackStage().max_missed
    gap = [[_det("right", 100)]] + [[] for _ in range(k)] + [[_det("right", 100)]]
    assert k == 3 and [t.frames for t in track(gap)] == [[0, k + 1]]
    # ... and ends at one more; the hand then starts a new track.
    gap = [[_det("right", 100)]] + [[] for _ in range(k + 1)] + [[_det("right", 100)]]
    assert len(track(gap)) == 2


def test_smoothness_term_penalises_acceleration_only():
    from handfit.batch.video import jitter
    from handfit.fitting.temporal import smooth_terms as _smooth_terms
    from handfit.options import TrackStage

    T = 6
    t = torch.arange(T, dtype=torch.float64)[:, None]
    linear = {"global_orient": 0.1 * t.repeat(1, 3), "pose": 0.05 * t.repeat(1, 4), "transl": 0.01 * t.repeat(1, 3)}
    assert torch.allclose(_smooth_terms(linear, TrackStage()), torch.zeros(T, dtype=torch.float64))
    shaky = {k: v.clone() for k, v in linear.items()}
    shaky["transl"][3, 2] += 0.01
    s = _smooth_terms(shaky, TrackStage())
    assert s[0] == 0 and s[-1] == 0 and s[2] > 0 and s[3] > 0 and s[4] > 0
    assert torch.equal(_smooth_terms(shaky, TrackStage(smooth=0.0)), torch.zeros(T, dtype=torch.float64))
    pts = np.cumsum(np.ones((5, 21, 3)), 0)
    assert jitter(pts) == 0 and jitter(pts + np.random.default_rng(0).normal(0, 1, pts.shape)) > 0


@pytest.mark.slow
def test_dev_clip_end_to_end(tmp_path, dev_data):
    clip = dev_data / "tfjs_models" / "asl_hand.25fps.mp4"
    if not clip.is_file():
        pytest.skip("dev clip absent")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "HANDFIT_NO_FSYNC": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "handfit.cli", "batch", str(clip), "-o", str(out), "--every", "5",
                        "--end", "20", "--kp-iters", "50", "--dense-iters", "20", "--texture-iters", "10", "-q"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "summary.jsonl").read_text())
    assert rec["status"] == "ok" and rec["frames"] == 4 and rec["kind"] == "video"
    assert abs(rec["fps"] - 5.0) < 1e-6                      # 25 fps / every 5
    for i in (0, 5, 10, 15):
        assert (out / "asl_hand.25fps" / f"frame_{i:06d}" / "result.json").is_file()
        (mtl,) = (out / "asl_hand.25fps" / f"frame_{i:06d}").glob("hand0_*.mtl")
        assert "map_Kd ../track0_texture.png" in mtl.read_text()
    assert (out / "asl_hand.25fps" / "track0_texture.png").is_file()      # one texture for the track
    z = np.load(out / "asl_hand.25fps" / "tracks.npz")
    assert list(z["frame_index"]) == [0, 5, 10, 15] and int(z["num_tracks"]) >= 1
    assert z["track0_keypoints_3d"].shape[1:] == (21, 3)
    assert np.ptp(z["track0_shape"], axis=0).max() == 0      # one shape per track
    av = pytest.importorskip("av")
    with av.open(str(out / "asl_hand.25fps" / "overlay.mp4")) as c:
        s = c.streams.video[0]
        assert sum(1 for _ in c.decode(s)) == 4 and abs(float(s.average_rate) - 5.0) < 1e-6
    assert "overlay.mp4" in (out / "index.html").read_text()


def test_videos_honour_detect_mode_and_intrinsics(monkeypatch):
    """--detect reaches the video detector; --intrinsics (else --focal) gives every frame's K."""
    from handfit.batch import video
    from handfit.fitting import pipeline
    from handfit.io import media
    from handfit.options import FitOptions

    made = []

    class Det(StandIn):
        def __init__(self, max_hands=None, mode="fast"):
            made.append(mode)

        def detect(self, rgb, mode=None):
            return [_det("right", 10.0)]

    frames = [(i, i / 10, np.zeros((48, 64, 3), np.uint8)) for i in range(3)]
    monkeypatch.setattr("handfit.detect.Detector", Det)
    monkeypatch.setattr(media, "video_info", lambda p: media.VideoInfo(10.0, 64, 48, 3))
    monkeypatch.setattr(media, "read_frames", lambda *a, **kw: iter(frames))
    seen_K = []

    def fake_fit_track(items, opts, res):
        seen_K.append(np.stack([it.K for it in items]))
        return pipeline.SideFit("right", None, items, None, {}, ["ik"] * len(items))

    monkeypatch.setattr(pipeline, "fit_track", fake_fit_track)
    opts = FitOptions(detect="thorough", intrinsics=(500.0, 510.0, 30.0, 20.0), device="cpu")
    from handfit.batch.records import VideoOptions

    res = video.run_video("clip.mp4", opts, VideoOptions())
    assert made == ["thorough"]
    want = np.array([[500.0, 0, 30.0], [0, 510.0, 20.0], [0, 0, 1]])
    assert len(seen_K) == 1 and np.allclose(seen_K[0], want[None].repeat(3, 0))
    assert [f[2] for f in res["frames"]] == [(48, 64)] * 3          # sizes kept, not pixels
    assert np.allclose(video._frame_result(frames[0][2], [], opts).K, want)
    opts = FitOptions(focal=321.0)
    assert pipeline.frame_intrinsics(64, 48, opts)[0, 0] == 321.0


def _synthetic_clip(path: Path, n: int = 3):
    """A short clip of a rendered right hand turning slowly; -> per-frame (keypoints_2d, keypoints_3d)."""
    av = pytest.importorskip("av")
    from handfit.models import load_model
    from handfit.train.synth import make_scene, render_scene

    model = load_model("anny", side="right")
    first = make_scene(model, seed=3, size=(192, 256))
    truth = []
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 256, 192, "yuv420p"
        s.options = {"crf": "12"}
        for i in range(n):
            p = {k: v.clone() for k, v in first.params.items()}
            p["global_orient"] = p["global_orient"] + torch.tensor([0.0, 0.08 * i, 0.0])
            bg = np.full((192, 256, 3), 0.35, np.float32)
            sc = render_scene(model, p, first.K, (192, 256), first.texture.astype(np.float32), bg)
            truth.append((sc.keypoints_2d.astype(np.float64), sc.keypoints.astype(np.float64)))
            for pkt in s.encode(av.VideoFrame.from_ndarray(sc.image, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return truth, first.K


@pytest.mark.slow
def test_video_frames_go_through_the_photo_pipeline(tmp_path, monkeypatch):
    """A short synthetic video through `handfit batch`: every frame gets the track's side
    decision (side_source) and, by default, the dense stage against the track's one
    texture (track0_texture.png, which every frame's .mtl refers to); with
    --no-appearance the frames are keypoint fits with the flat skin texture of their own."""
    from click.testing import CliRunner
    from PIL import Image

    from handfit.cli import main

    truth, K = _synthetic_clip(tmp_path / "clip.mp4")
    TruthDetector, calls = truth_detector(truth, score=0.6)   # an unsure handedness: the side check runs
    monkeypatch.setattr("handfit.detect.Detector", TruthDetector)
    small = ["--kp-iters", "40", "--dense-iters", "8", "--texture-iters", "4", "--intrinsics", f"{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}", "-q",
             "--no-gallery"]
    for extra, dense in (([], True), (["--no-appearance"], False)):
        calls.clear()
        out = tmp_path / f"out_{dense}"
        r = CliRunner().invoke(main, ["batch", str(tmp_path / "clip.mp4"), "-o", str(out)] + small + extra)
        assert r.exit_code == 0, r.output
        folders = sorted((out / "clip").glob("frame_*"))
        assert len(folders) == 3
        assert (out / "clip" / "track0_texture.png").is_file() == dense
        for f in folders:
            doc = json.loads((f / "result.json").read_text())
            (hand,) = doc["hands"]
            assert hand["side"] == "right" and hand["side_source"] == "fit", hand["side_source"]
            assert set(hand["side_losses"]) == {"left", "right"}
            mtl = (f / hand["files"]["mtl"]).read_text()
            tex_path = f / hand["files"]["texture"]
            tex = np.asarray(Image.open(tex_path).convert("RGB"), np.float64)
            assert ("dense" in hand["losses"]) == dense
            assert (tex.std(axis=(0, 1)).max() > 2.0) == dense      # a fitted texture, or the flat skin
            if dense:   # the track's one texture, referred to, not copied per frame
                assert hand["files"]["texture"] == "../track0_texture.png" and "map_Kd ../track0_texture.png" in mtl
                assert sorted(p.name for p in f.glob("*.png")) == ["overlay.png"]
                assert hand["metrics"]["texture_iters"] == 0 and hand["metrics"]["track"] == 0
            else:
                assert hand["files"]["texture"] == "hand0_right.png" and tex_path.is_file()
        z = np.load(out / "clip" / "tracks.npz")
        assert str(z["track0_side_source"]) == "fit" and z["track0_dense"].tolist() == [dense] * 3
        assert np.isfinite(z["track0_loss_keypoint_kp2d"]).all()
        assert ("track0_loss_dense_photo" in z.files) == dense      # the per-frame dense losses are kept
        if dense:
            assert np.isfinite(z["track0_loss_dense_photo"]).all()


def test_boxes_warn_that_videos_are_searched_whole(tmp_path, monkeypatch):
    from handfit.batch import runner

    make_clip(tmp_path / "clip.mp4", n=2)
    monkeypatch.setattr(runner, "run_local", lambda todo, job, log, run_id, fit=None: 0)
    with pytest.warns(UserWarning, match="videos are searched whole"):
        runner.run_batch([tmp_path], tmp_path / "out", boxes={"x.png": [(0, 0, 1, 1)]}, gallery=False)


def test_end_not_after_start_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from handfit.cli import main

    make_clip(tmp_path / "clip.mp4", n=2)
    for start, end in ((5, 5), (5, 3)):
        r = CliRunner().invoke(main, ["batch", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "out"),
                                      "--start", str(start), "--end", str(end), "-q"])
        assert r.exit_code == 2 and "--end" in r.output, r.output
    assert not (tmp_path / "out" / "summary.jsonl").exists()


@pytest.mark.slow
def test_video_frames_are_streamed_not_held(tmp_path, monkeypatch):
    """Detection sees one decoded frame at a time, writing a few (two per worker thread, written
    side by side), however long the clip; the outputs are whole."""
    from handfit.batch import inputs, video
    from handfit.batch.records import BatchJob
    from handfit.io import media

    monkeypatch.setenv("HANDFIT_THREADS", "2")

    make_clip(tmp_path / "clip.mp4", n=12)
    read_frames, peak = _counting_reader(media.read_frames)

    class NoHands(StandIn):
        def __init__(self, *a, **kw):
            pass

        def detect(self, rgb, mode=None):
            return []

    monkeypatch.setattr(media, "read_frames", read_frames)
    monkeypatch.setattr("handfit.detect.Detector", NoHands)
    job = BatchJob(out=tmp_path / "out")
    rec = video.process_video(inputs.Unit("video", str(tmp_path / "clip.mp4"), "clip"), job, "run")
    assert rec["status"] == "no_hand" and rec["frames"] == 12, rec
    assert peak[0] <= 2 * 2, peak    # all 12 frames were held at once before
    out = tmp_path / "out" / "clip"
    assert sorted(p.name for p in out.glob("frame_*")) == [f"frame_{i:06d}" for i in range(12)]
    av = pytest.importorskip("av")
    with av.open(str(out / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 12


def test_finish_tracks_streams_the_frames(tmp_path, monkeypatch):
    """The two decodings that finish the tracks hold one frame at a time and feed every hand of a
    frame to its own track's finisher (TrackFinish), each pass in frame order; the textures are
    made between the passes."""
    from handfit.batch import video
    from handfit.batch.records import VideoOptions
    from handfit.fitting import pipeline
    from handfit.io import media
    from handfit.options import FitOptions

    make_clip(tmp_path / "clip.mp4", n=6)
    read_frames, peak = _counting_reader(media.read_frames)
    log = []

    class Finish:  # a track's TrackFinish, as far as finish_tracks drives it
        def __init__(self, fit, opts, res, progress=None):
            self.t = fit

        def observe(self, b, rgb):
            log.append(("observe", self.t, b, round(float(rgb.mean()) / 10)))

        def texture(self):
            log.append(("texture", self.t))

        def dense(self, b, rgb):
            log.append(("dense", self.t, b, round(float(rgb.mean()) / 10)))

        def results(self):
            return [self.t]

    monkeypatch.setattr(media, "read_frames", read_frames)
    monkeypatch.setattr(pipeline, "TrackFinish", Finish)
    frames = [(i, i / 10, (48, 64)) for i in range(0, 6, 2)]
    per_frame = [[(0, 0), (1, 0)], [(0, 1)], [(1, 1), (0, 2)]]     # two tracks, one missing frame 1
    got = video.finish_tracks(tmp_path / "clip.mp4", frames, per_frame, [0, 1], FitOptions(), VideoOptions(every=2),
                              None)
    assert got == [[0], [1]]
    seen = [x[1:] for x in log if x[0] == "observe"]
    assert seen == [(0, 0, 0), (1, 0, 0), (0, 1, 2), (1, 1, 4), (0, 2, 4)]   # each frame's pixels, to its tracks
    assert log[len(seen):len(seen) + 2] == [("texture", 0), ("texture", 1)]  # between the passes
    assert [x[1:] for x in log if x[0] == "dense"] == seen
    assert peak[0] <= 2, peak
