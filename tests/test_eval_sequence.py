"""handfit eval --sequence: runs read from folders, the acceleration error, four variants on one
set of detections, and the command end to end on a rendered moving hand."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from PIL import Image

from handfit.detect import Detection
from handfit.eval.datasets import DatasetError, read_runs
from handfit.eval.metrics import accel_errors
from handfit.eval.records import project_points
from stand_ins import StandIn as StandInBase


def test_accel_errors_on_a_known_trajectory():
    T = 6
    t = np.arange(T, dtype=np.float64)[:, None, None]
    rest = np.random.default_rng(0).normal(size=(1, 21, 3)) * 30.0
    gt = rest + 4.0 * t * np.array([1.0, 0, 0])                  # every joint at constant velocity: no acceleration
    # the same hand carried along a cubic path (root-relative: no effect), joint 7 on a parabola 3 t^2 in y
    pred = gt + 0.5 * t ** 3 * np.array([0, 0, 1.0])
    pred[:, 7, 1] += 3.0 * t[:, 0, 0] ** 2                        # second difference 6 at every frame
    e = accel_errors(pred, gt)
    assert np.isnan(e[0]) and np.isnan(e[-1])
    assert np.allclose(e[1:-1], 6.0 / 21)                         # mean over the 21 joints
    assert np.allclose(accel_errors(gt, gt)[1:-1], 0)
    # the root is subtracted: moving only the wrist moves every other joint the other way
    wrist = gt.copy()
    wrist[:, 0, 2] += 2.0 * t[:, 0, 0] ** 2                       # wrist accelerates 4 per frame^2
    assert np.allclose(accel_errors(wrist, gt)[1:-1], 4.0 * 20 / 21)
    # a frame without prediction: no error where it or a neighbour is missing
    valid = np.ones(T, bool)
    valid[3] = False
    e = accel_errors(pred, gt, valid)
    assert np.isnan(e[[0, 2, 3, 4, 5]]).all() and np.isclose(e[1], 6.0 / 21)
    assert np.isnan(accel_errors(pred[:2], gt[:2])).all()         # under three frames: none
    with pytest.raises(ValueError):
        accel_errors(pred, gt[:4])


# -- a hand-made sequence dataset ---------------------------------------------------------------


def _truth(run: int, t: int) -> np.ndarray:
    """(21,3) metres: one hand per run moving at constant velocity (no acceleration)."""
    rest = np.random.default_rng(run).normal(size=(21, 3)) * 0.03 + [0.0, 0.0, 0.45]
    return rest + t * np.array([0.004, -0.002, 0.0])


def _K(t: int) -> np.ndarray:
    return np.array([[300.0, 0, 30.0 + 5 * t], [0, 300.0, 40.0 - 3 * t], [0, 0, 1]])   # a crop moving per frame


def _write_frame(folder, run: int, t: int, label: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    img = folder / f"{t:05d}.png"
    Image.fromarray(np.full((64, 64, 3), (run * 10 + t, 0, 0), np.uint8)).save(img)
    if label:
        gt = _truth(run, t)
        doc = {"K": _K(t).tolist(), "hands": [{"side": "left", "keypoints_3d_cam_mm": (gt * 1000).tolist(),
                                                "keypoints_2d": project_points(gt, _K(t)).tolist()}]}
        (folder / f"{img.name}.gt.json").write_text(json.dumps(doc))


def _dataset(root, lengths=(4, 3)):
    for r, n in enumerate(lengths):
        for t in range(n):
            _write_frame(root / "clips" / f"run{r}", r, t)
    return root


class FakeDetector(StandInBase):
    """Detects the labelled hand of every frame except frame 1 of run 1, 1 px off, world = centred truth."""

    def __init__(self):
        self.calls = []

    def detect(self, rgb, mode=None):
        code = int(rgb[0, 0, 0])
        run, t = divmod(code, 10)
        self.calls.append((run, t))
        if (run, t) == (1, 1):
            return []
        gt = _truth(run, t)
        uv = project_points(gt, _K(t)) + 1.0
        return [Detection("left", 0.99, np.array([*uv.min(0), *uv.max(0)]), uv, np.zeros(21), gt - gt.mean(0),
                          (64, 64))]

    def close(self):
        pass


def _frame_of(det) -> tuple:
    """(run, t) of a stand-in detection: the frame whose truth projects next to its keypoints."""
    for run in range(2):
        for t in range(4):
            if np.allclose(project_points(_truth(run, t), _K(t)) + 1.0, det.keypoints):
                return run, t
    raise AssertionError("not a stand-in detection")


def _hand(kp3d, K, seconds, side="left"):
    return types.SimpleNamespace(side=side, keypoints_3d=kp3d, keypoints_2d_fitted=project_points(kp3d, K),
                                 seconds=seconds, metrics={"keypoint_seconds": seconds / 4})


def fake_fit_batch(images, detections=None, intrinsics=None, options=None):
    """Single frames: the dense fit is the truth with joint 5 of frame 1 moved 10 mm; its
    keypoint stage is the truth."""
    fake_fit_batch.calls.append(len(images))
    out = []
    for dets, K in zip(detections, intrinsics):
        hands = []
        for d in dets:
            run, t = _frame_of(d)
            gt = _truth(run, t)
            kp = gt.copy()
            if t == 1:
                kp[5, 0] += 0.010
            h = _hand(kp, K, 2.0)
            h.keypoints_2d_detected = d.keypoints.copy()
            h.stages = {"keypoint": {"keypoints_3d": gt, "keypoints_2d": project_points(gt, K)}}
            hands.append(h)
        out.append(types.SimpleNamespace(hands=hands))
    return out


def fake_fit_sequence(items, opts, dense):
    """One track: both sequence fits are the truth."""
    fake_fit_sequence.calls.append(([_frame_of(it.detection) for it in items], [it.K for it in items], dense))
    hands = [_hand(_truth(*_frame_of(it.detection)), it.K, 1.0) for it in items]
    return hands, ([_hand(h.keypoints_3d, it.K, 3.0) for h, it in zip(hands, items)] if dense else None)


def test_read_runs_layout_and_errors(tmp_path):
    root = _dataset(tmp_path / "data", (4, 3))
    runs = read_runs(root)
    assert [(name, [r.image.name for r in frames]) for name, frames in runs] == [
        ("clips/run0", ["00000.png", "00001.png", "00002.png", "00003.png"]),
        ("clips/run1", ["00000.png", "00001.png", "00002.png"])]
    assert np.allclose(runs[0][1][2].K, _K(2))                      # each frame its own K
    assert [len(f) for _, f in read_runs(root, every=2)] == [2, 2]
    # labelled frames directly in the folder: no runs
    flat = tmp_path / "flat"
    _write_frame(flat, 0, 0)
    with pytest.raises(DatasetError, match="one subfolder per run"):
        read_runs(flat)
    # a frame without its label
    _write_frame(root / "clips" / "run1", 1, 5, label=False)
    with pytest.raises(DatasetError, match=r"run1: frames without labels: 00005\.png"):
        read_runs(root)
    with pytest.raises(DatasetError, match="no labelled image"):
        read_runs(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)


def test_four_variants_on_one_set_of_detections(tmp_path):
    from handfit.eval.report import summary_table, write_report
    from handfit.eval.sequence import SEQUENCE_VARIANTS, evaluate_sequences
    from handfit.options import FitOptions

    runs = read_runs(_dataset(tmp_path / "data"))
    det = FakeDetector()
    fake_fit_batch.calls, fake_fit_sequence.calls = [], []
    ev = evaluate_sequences(runs, FitOptions(), SEQUENCE_VARIANTS, detector=det, fit_batch=fake_fit_batch,
                            fit_sequence=fake_fit_sequence, warmup=False)
    # each frame twice: once for the single-frame variants, once by the clip's Follower (whose stand-in
    # landmark model finds no tracked hand where predicted, so that the cascade runs every frame)
    assert sorted(det.calls) == sorted([(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)] * 2)
    assert fake_fit_batch.calls == [1] * 6                          # the six detected frames, each alone
    # one track per run, over its detected frames, in order, each with its own K, dense on
    assert [c[0] for c in fake_fit_sequence.calls] == [[(0, 0), (0, 1), (0, 2), (0, 3)], [(1, 0), (1, 2)]]
    assert all(np.allclose(K, _K(t)) for (frames, Ks, _) in fake_fit_sequence.calls
               for (_, t), K in zip(frames, Ks))
    assert all(c[2] for c in fake_fit_sequence.calls)
    s = ev.summary
    assert list(s) == list(SEQUENCE_VARIANTS)
    for v in SEQUENCE_VARIANTS:
        assert s[v]["n"] == 6 and s[v]["recall"] == pytest.approx(6 / 7)
    # run 0's truth has no acceleration; the dense fit's frame 1 has joint 5 10 mm off: root-relative second
    # differences of -20 mm (frame 1) and +10 mm (frame 2) on one joint of 21; run 1 misses its middle frame
    assert s["dense"]["accel_mm"] == pytest.approx((20 / 21 + 10 / 21) / 2)
    for v in ("mediapipe", "keypoint", "sequence_keypoint", "sequence_dense"):
        assert s[v]["accel_mm"] == pytest.approx(0, abs=1e-9)
        assert s[v]["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6)
    assert s["sequence_keypoint"]["s_per_hand"] == 1.0 and s["sequence_dense"]["s_per_hand"] == 3.0
    assert s["keypoint"]["s_per_hand"] == 0.5 and s["dense"]["s_per_hand"] == 2.0
    rows = ev.rows
    assert [r["run"] for r in rows] == ["clips/run0"] * 4 + ["clips/run1"] * 3
    assert np.isnan(rows[0]["dense_accel_mm"]) and rows[1]["dense_accel_mm"] == pytest.approx(20 / 21)
    assert all(np.isnan(r["dense_accel_mm"]) for r in rows[4:])
    paths = write_report(ev, tmp_path / "out", plot=False)
    doc = json.loads(paths["metrics"].read_text())
    assert list(doc) == list(SEQUENCE_VARIANTS) and all("accel_mm" in m for m in doc.values())
    pred = json.loads(paths["predictions"].read_text())["hands"]
    assert pred[4]["run"] == "clips/run1" and "sequence_dense" in pred[4] and "sequence_dense" not in pred[5]
    assert "accel mm/f²" in summary_table(ev.summary).splitlines()[0]


def test_a_failed_track_is_recorded_and_the_run_goes_on(tmp_path):
    from handfit.eval.sequence import evaluate_sequences
    from handfit.options import FitOptions

    runs = read_runs(_dataset(tmp_path / "data"))

    def fit_sequence(items, opts, dense):
        if len(items) == 4:
            raise ValueError("singular matrix")
        return fake_fit_sequence(items, opts, dense)

    fake_fit_batch.calls, fake_fit_sequence.calls = [], []
    ev = evaluate_sequences(runs, FitOptions(), ("mediapipe", "sequence_dense"), detector=FakeDetector(),
                            fit_batch=fake_fit_batch, fit_sequence=fit_sequence, warmup=False)
    assert fake_fit_batch.calls == []                               # no single-frame variant asked
    assert ev.summary["sequence_dense"]["n"] == 2 and ev.summary["mediapipe"]["n"] == 6
    assert "track fit failed: ValueError: singular matrix" in ev.rows[0]["error"]


def _render_dataset(root, lengths=(3, 2)):
    """Runs of a rendered left hand moving and bending; each frame's camera shifted like a crop."""
    import torch

    from handfit.models import load_model
    from handfit.train.synth import background, random_params, render_scene, skin_texture

    model = load_model("anny", side="left")
    gen = np.random.default_rng(3)
    size = (128, 128)
    for r, frames in enumerate(lengths):
        K0 = np.array([[180.0, 0, 63.5], [0, 180.0, 63.5], [0, 0, 1]])
        params = random_params(model, gen, K0, size, spread=0.3)
        tex, bg = skin_texture(gen), background(gen, *size)
        for t in range(frames):
            p = {k: v.clone() for k, v in params.items()}
            p["transl"] = p["transl"] + torch.tensor([0.004 * t, 0.0, 0.0], dtype=p["transl"].dtype)
            p["pose"] = p["pose"] + 0.05 * t
            K = K0.copy()
            K[0, 2] -= 180.0 * 0.004 * t / float(p["transl"][2])  # the crop follows the hand
            sc = render_scene(model, p, K, size, tex, bg)
            folder = root / f"run{r}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{t:03d}.png"
            Image.fromarray(sc.image).save(folder / name)
            doc = {"K": K.tolist(), "hands": [{"side": "left", "keypoints_3d_cam_mm": (sc.keypoints * 1000).tolist(),
                                                "keypoints_2d": sc.keypoints_2d.tolist()}]}
            (folder / f"{name}.gt.json").write_text(json.dumps(doc))
    return root


@pytest.mark.slow
def test_cli_sequence_compare_in_process(tmp_path, monkeypatch):
    """`handfit eval DATA --sequence --compare` through the real pipeline (few iterations), with a
    stand-in detector: each frame detected once, one track per run, four fitted variants. Kept
    fast: few iterations everywhere (the track's warm starts and joint refinement included)."""
    import csv
    import dataclasses

    from click.testing import CliRunner

    from handfit.cli import main
    from handfit.eval.datasets import read_dev3d
    from handfit.eval.metrics import pa_mpjpe
    from handfit.fitting import pipeline
    from handfit.fitting.resources import Resources

    root = _render_dataset(tmp_path / "data")
    truth = {}
    for rec in read_dev3d(root):
        truth[np.asarray(Image.open(rec.image).convert("RGB")).tobytes()] = rec

    class Detector(StandInBase):
        calls = 0

        def detect(self, rgb, mode=None):
            Detector.calls += 1
            rec = truth[np.ascontiguousarray(rgb).tobytes()]
            kp, w = rec.hands[0].keypoints_2d, rec.hands[0].keypoints_3d
            return [Detection("left", 0.99, np.array([*kp.min(0) - 8, *kp.max(0) + 8]), kp, np.zeros(21),
                              w - w.mean(0), (128, 128))]

    tracks = []
    real_fit_track = pipeline.fit_track

    def spy(items, opts, res):
        tracks.append(len(items))
        quick = dataclasses.replace(opts, track=dataclasses.replace(opts.track, warm_iters=5, refine_iters=5))
        return real_fit_track(items, quick, res)

    monkeypatch.setattr(Resources, "detector", lambda self, *a, **k: Detector())
    monkeypatch.setattr(pipeline, "fit_track", spy)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["eval", str(root), "--sequence", "--compare", "--views", "0", "--device", "cpu",
                                  "--kp-iters", "10", "--dense-iters", "2", "--texture-iters", "1",
                                  "--texture-prior", "none", "--photo-mask", "colour", "-q",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert Detector.calls == 10 and tracks == [3, 2]   # each frame: its own detection, then the Follower's
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc) == ["mediapipe", "keypoint", "dense", "sequence_keypoint", "sequence_dense"]
    pred = json.loads((out / "predictions.json").read_text())["hands"]
    assert [h["run"] for h in pred] == ["run0"] * 3 + ["run1"] * 2
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    gt = np.array([h["gt_3d"] for h in pred])                          # (5,21,3) m
    for v, m in doc.items():
        kp = np.array([h[v]["keypoints_3d"] for h in pred])            # every frame detected and fitted
        assert m["n"] == 5
        assert m["pa_mpjpe_mm"] == pytest.approx(float(pa_mpjpe(kp, gt).mean()) * 1000, rel=1e-9)
        # only run0's middle frame has both neighbours (run1 has two frames)
        assert m["accel_mm"] == pytest.approx(float(accel_errors(kp[:3] * 1000, gt[:3] * 1000)[1]), rel=1e-9)
        seconds = [float(r[f"{v}_seconds"]) for r in rows]
        assert m["s_per_hand"] == pytest.approx(np.mean(seconds), abs=1e-4) and min(seconds) > 0
    # the stand-in detector's world landmarks are the centred truth: nothing to align, no acceleration
    assert doc["mediapipe"]["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6)
    assert doc["mediapipe"]["accel_mm"] == pytest.approx(0, abs=1e-9)
    assert "sequence_dense" in r.output and "accel" in r.output
    # texture scores: seen for both texture variants, leave-one-out for the track; runs of 3 and 2
    # frames have no pair 4 frames apart (--texture-gap 1 has, below)
    assert 0 < doc["dense"]["tex_seen"] < 0.2 and doc["dense"]["tex_pairs"] == 0
    assert 0 < doc["sequence_dense"]["tex_seen"] < doc["sequence_dense"]["tex_loo"] < 0.3
    assert "tex_seen" not in doc["keypoint"] and "| dense |" in r.output.split("novel/flat")[1]
    assert all(float(r["dense_tex_seen"]) > 0 for r in rows)
    r = CliRunner().invoke(main, ["eval", str(root), "--sequence", "--compare", "--views", "0", "--device", "cpu",
                                  "--kp-iters", "10", "--dense-iters", "2", "--texture-iters", "1",
                                  "--texture-prior", "none", "--photo-mask", "colour", "-q", "--texture-gap", "1",
                                  "--limit", "1", "-o", str(tmp_path / "out1")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "out1" / "metrics.json").read_text())
    assert doc["dense"]["tex_pairs"] == 4 and 0 < doc["dense"]["tex_novel"] < 1
    assert doc["sequence_dense"]["tex_pairs"] == 0                    # one texture per track: no novel pairs


def test_cli_help_and_bad_layouts(tmp_path):
    from click.testing import CliRunner

    from handfit.cli import main

    r = CliRunner().invoke(main, ["eval", "--help"])
    assert r.exit_code == 0 and "--sequence" in r.output
    flat = tmp_path / "flat"
    _write_frame(flat, 0, 0)
    r = CliRunner().invoke(main, ["eval", str(flat), "--sequence", "-q"])
    assert r.exit_code == 4 and "one subfolder per run" in r.output
    root = _dataset(tmp_path / "data", (3,))
    _write_frame(root / "clips" / "run0", 0, 7, label=False)
    r = CliRunner().invoke(main, ["eval", str(root), "--sequence", "-q"])
    assert r.exit_code == 4 and "frames without labels: 00007.png" in r.output
    r = CliRunner().invoke(main, ["eval", str(root), "--sequence", "--format", "freihand", "-q"])
    assert r.exit_code == 2 and "--sequence reads the dev3d layout" in r.output
    r = CliRunner().invoke(main, ["eval", str(root), "--sequence", "--save-fits", "-q"])
    assert r.exit_code == 2 and "--save-fits does not apply" in r.output
