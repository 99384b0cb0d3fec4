"""handfit.eval.run and report: matching, variants from one fit, the metrics.json schema."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from PIL import Image

from handfit.detect import Detection
from handfit.eval.records import HandLabel, Record, project_points
from handfit.eval.report import summary_table, write_report
from handfit.eval.run import SUMMARY_KEYS, evaluate, match_hands
from stand_ins import StandIn

K = np.array([[300.0, 0, -20.0], [0, 310.0, 140.0], [0, 0, 1]])


def _hand(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(21, 3)) * 0.03 + [0.02, 0.0, 0.4]


def _records(tmp_path, n=3):
    recs = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((64, 64, 3), i, np.uint8)).save(p)
        recs.append(Record(p, K, [HandLabel("left", keypoints_3d=_hand(i))], name=p.name))
    return recs


class FakeDetector(StandIn):
    """Detects the labelled hand of images 0 and 1 (image 1 with the wrong side), nothing in image 2."""

    def __init__(self, records):
        self.by_value = {int(i): r for i, r in enumerate(records)}

    def detect(self, rgb, mode=None):
        i = int(rgb[0, 0, 0])
        if i == 2:
            return []
        gt = self.by_value[i].hands[0].keypoints_3d
        uv = project_points(gt, K) + 1.0                                # 1.41 px off
        far = Detection("right", 0.5, np.zeros(4), uv + 500, np.zeros(21), gt * 0, (64, 64))  # a stray hand
        return [Detection("left" if i == 0 else "right", 0.9, np.zeros(4), uv, np.zeros(21),
                          gt - gt.mean(0), (64, 64)), far]

    def close(self):
        pass


def fake_fit_batch(images, detections=None, intrinsics=None, options=None):
    """Dense fit = the truth; keypoint stage = the truth with one joint 10 mm off."""
    fake_fit_batch.calls.append({"n": len(images), "K": intrinsics, "dense": options.dense.enabled,
                                 "dets": [len(d) for d in detections]})
    out = []
    for img, dets in zip(images, detections):
        i = int(img.rgb[0, 0, 0])
        gt = _hand(i)
        hands = []
        for d in dets:
            kp = gt.copy()
            kp[5] += [0.01, 0, 0]
            hands.append(types.SimpleNamespace(
                side=d.side, keypoints_2d_detected=d.keypoints.copy(), keypoints_3d=gt, keypoints_2d_fitted=project_points(gt, K),
                seconds=2.0, metrics={"keypoint_seconds": 0.5},
                stages={"keypoint": {"keypoints_3d": kp, "keypoints_2d": project_points(kp, K)}}
                if options.dense.enabled else {}))
        out.append(types.SimpleNamespace(hands=hands))
    return out


def test_match_hands():
    g = np.zeros((21, 2))
    g[:, 0] = np.arange(21) * 5                                          # size 100 px
    near = types.SimpleNamespace(keypoints=g + 10)                        # 14 px / 100 = 0.14
    far = types.SimpleNamespace(keypoints=g + 80)
    assert match_hands([g, g + 1000], [None, None], [far, near]) == [1, None]
    assert match_hands([g], [None], [far]) == [None]                      # 113 px / 100 > 0.5
    assert match_hands([g], [None], [far], threshold=2.0) == [0]
    assert match_hands([None], [None], [near]) == [None]


def test_evaluate_one_fit_gives_both_variants_and_the_schema(tmp_path):
    from handfit.api import FitOptions

    recs = _records(tmp_path)
    fake_fit_batch.calls = []
    ev = evaluate(recs, FitOptions(), ("mediapipe", "keypoint", "dense"), batch_size=2, detector=FakeDetector(recs),
                  fit_batch=fake_fit_batch, warmup=False)
    # one fit per batch, with the records' K, only the matched detection, the dense stage on
    assert [c["n"] for c in fake_fit_batch.calls] == [2]
    assert all(c["dense"] for c in fake_fit_batch.calls) and fake_fit_batch.calls[0]["dets"] == [1, 1]
    assert all(np.array_equal(k, K) for k in fake_fit_batch.calls[0]["K"])
    s = ev.summary
    assert set(s) == {"mediapipe", "keypoint", "dense"}
    assert s["dense"]["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6) and s["dense"]["auc_0_50"] > 0.99
    # one joint 10 mm off: Procrustes minimises the squared error, so the mean is at most the RMS sqrt(100 / 21)
    assert 0.1 < s["keypoint"]["pa_mpjpe_mm"] < np.sqrt(100 / 21)
    assert s["keypoint"]["rr_mpjpe_mm"] == pytest.approx(10 / 21)
    assert s["dense"]["kp2d_px"] == pytest.approx(0, abs=1e-9)
    assert s["mediapipe"]["kp2d_px"] == pytest.approx(np.sqrt(2))
    assert s["mediapipe"]["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6)  # world = centred truth
    for v in s.values():
        assert v["recall"] == pytest.approx(2 / 3) and v["wrong_side"] == 1 and v["n"] == 2
    assert s["keypoint"]["s_per_hand"] == 0.5 and s["dense"]["s_per_hand"] == 2.0
    rows = {r["image"]: r for r in ev.rows}
    assert rows["2.png"]["detected"] == 0 and np.isnan(rows["2.png"]["dense_pa_mpjpe_mm"])
    assert rows["1.png"]["wrong_side"] == 1 and rows["0.png"]["detections"] == 2

    paths = write_report(ev, tmp_path / "out")
    doc = json.loads(paths["metrics"].read_text())
    assert set(doc) == {"mediapipe", "keypoint", "dense"}
    for v in doc.values():
        assert list(v) == [*SUMMARY_KEYS, "suspect"]
        assert list(SUMMARY_KEYS) == ["pa_mpjpe_mm", "rr_mpjpe_mm", "auc_0_50", "kp2d_px", "recall", "wrong_side",
                                      "s_per_hand", "n"]
        assert v["suspect"] is None                     # the stand-in fit gives no verdict
        assert all(isinstance(v[k], float) for k in SUMMARY_KEYS[:5] + ("s_per_hand",))
        assert isinstance(v["wrong_side"], int) and isinstance(v["n"], int)
    lines = paths["csv"].read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("image,hand,side,detected")
    assert paths["plot"].stat().st_size > 1000
    curves = json.loads(paths["curves"].read_text())
    assert len(curves["thresholds_mm"]) == len(curves["pck"]["dense"]) == 101
    assert "| dense | 0.00 |" in summary_table(ev.summary)
    # predictions.json: the truth and each variant's keypoints, enough to recompute the metrics
    pred = json.loads(paths["predictions"].read_text())["hands"]
    assert [(h["image"], h["hand"]) for h in pred] == [(r["image"], r["hand"]) for r in ev.rows]
    by = {h["image"]: h for h in pred}
    assert "dense" not in by["2.png"] and by["2.png"]["gt_3d"] is not None          # missed: truth only
    for name in ("0.png", "1.png"):
        h = by[name]
        assert set(h) >= {"mediapipe", "keypoint", "dense", "gt_3d", "gt_2d", "visible", "side", "detected_side"}
        gt, k3 = np.array(h["gt_3d"]), np.array(h["keypoint"]["keypoints_3d"])
        assert gt.shape == k3.shape == (21, 3)
        assert np.array(h["dense"]["keypoints_2d"]).shape == (21, 2)
    gt = np.stack([np.array(by[n]["gt_3d"]) for n in ("0.png", "1.png")]) * 1000
    k3 = np.stack([np.array(by[n]["keypoint"]["keypoints_3d"]) for n in ("0.png", "1.png")]) * 1000
    from handfit.eval import metrics as M
    assert M.pa_errors(k3, gt).mean() == pytest.approx(s["keypoint"]["pa_mpjpe_mm"], rel=1e-6)


def test_evaluate_keypoint_only_and_fallback(tmp_path):
    from handfit.api import FitOptions

    recs = _records(tmp_path, 2)
    fake_fit_batch.calls = []
    ev = evaluate(recs, FitOptions(), ("mediapipe", "keypoint"), detector=FakeDetector(recs),
                  fit_batch=fake_fit_batch, warmup=False)
    assert set(ev.summary) == {"mediapipe", "keypoint"}
    assert [c["dense"] for c in fake_fit_batch.calls] == [False, False]  # batch size 1: one call per image
    assert ev.summary["keypoint"]["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6)  # the final fit is the truth here

    def no_stages(*a, **k):                        # an API without stages["keypoint"]: fitted again, keypoints only
        res = fake_fit_batch(*a, **k)
        for r in res:
            for h in r.hands:
                h.stages = {}
        return res

    fake_fit_batch.calls = []
    ev = evaluate(recs[:1], FitOptions(), ("keypoint", "dense"), detector=FakeDetector(recs), fit_batch=no_stages,
                  warmup=False)
    assert [c["dense"] for c in fake_fit_batch.calls] == [True, False]
    assert ev.summary["keypoint"]["n"] == 1 and ev.summary["dense"]["n"] == 1


def test_unreadable_image_counts_as_missed(tmp_path):
    from handfit.api import FitOptions

    recs = _records(tmp_path, 1)
    recs.append(Record(tmp_path / "missing.png", K, [HandLabel("left", keypoints_3d=_hand(9))]))
    ev = evaluate(recs, FitOptions(), ("mediapipe", "dense"), detector=FakeDetector(recs), fit_batch=fake_fit_batch,
                  warmup=False)
    assert ev.summary["dense"]["recall"] == pytest.approx(0.5)
    assert "missing.png" in ev.rows[1]["error"]


def test_partial_results_after_every_batch(tmp_path):
    from handfit.api import FitOptions

    recs = _records(tmp_path, 3)
    seen = []

    def on_chunk(partial):
        seen.append(len(partial.rows))
        paths = write_report(partial, tmp_path / "partial", plot=False)
        assert "plot" not in paths and json.loads(paths["metrics"].read_text())["dense"]["n"] <= 2

    evaluate(recs, FitOptions(), ("mediapipe", "dense"), detector=FakeDetector(recs), fit_batch=fake_fit_batch,
             warmup=False, on_chunk=on_chunk)
    assert seen == [1, 2, 3]


def test_one_bad_image_is_recorded_and_the_run_goes_on(tmp_path):
    from handfit.api import FitOptions

    recs = _records(tmp_path, 3)
    recs.append(Record(tmp_path / "0.png", K, [HandLabel("left", keypoints_3d=_hand(0))], name="again.png"))

    class Det(FakeDetector):
        def detect(self, rgb, mode=None):
            if int(rgb[0, 0, 0]) == 1:
                raise RuntimeError("graph failure")
            return super().detect(rgb)

    def fit(images, detections=None, intrinsics=None, options=None):
        if any(int(img.rgb[0, 0, 0]) == 0 for img in images) and len(images) == 1 and fit.fail_next:
            fit.fail_next = False
            raise ValueError("singular matrix")
        if len(images) > 1:
            raise ValueError("the batch fails as a whole")
        return fake_fit_batch(images, detections, intrinsics, options)

    fit.fail_next = True
    ev = evaluate(recs, FitOptions(), ("mediapipe", "dense"), batch_size=4, detector=Det(recs), fit_batch=fit,
                  warmup=False)
    by = {r["image"]: r for r in ev.rows}
    assert "RuntimeError: graph failure" in by["1.png"]["error"] and not by["1.png"]["detected"]
    assert "ValueError: singular matrix" in by["0.png"]["error"]            # its fit failed alone ...
    assert by["0.png"]["detected"] and np.isfinite(by["0.png"]["mediapipe_pa_mpjpe_mm"])   # ... MediaPipe kept
    assert not np.isfinite(by["0.png"]["dense_pa_mpjpe_mm"])
    assert by["again.png"]["error"] == "" and np.isfinite(by["again.png"]["dense_pa_mpjpe_mm"])
    assert ev.summary["dense"]["n"] == 1 and ev.summary["mediapipe"]["n"] == 2


def test_report_files_are_replaced_atomically(tmp_path):
    from handfit.api import FitOptions

    recs = _records(tmp_path, 2)
    ev = evaluate(recs, FitOptions(), ("mediapipe", "dense"), detector=FakeDetector(recs), fit_batch=fake_fit_batch,
                  warmup=False)
    paths = write_report(ev, tmp_path / "out", plot=False)
    before = {k: p.read_bytes() for k, p in paths.items()}

    class Unprintable:
        def __str__(self):
            raise KeyboardInterrupt  # a kill while the CSV is being written

    ev.rows[-1]["error"] = Unprintable()
    with pytest.raises(KeyboardInterrupt):
        write_report(ev, tmp_path / "out", plot=False)
    assert {k: p.read_bytes() for k, p in paths.items()} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "pck.json", "per_image.csv",
                                                                        "predictions.json"]


def test_eval_help_tells_the_true_defaults():
    from click.testing import CliRunner

    from handfit.cli import main

    r = CliRunner().invoke(main, ["eval", "--help"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "the one with test labels" not in text and "ho3d train (its" in text
    assert "after every image" not in text and "after every --batch-size images" in text


def test_one_session_warms_up_once_and_closes_only_what_it_opened(tmp_path, monkeypatch):
    """EvalSession: one throw-away fit (2 keypoint iterations, first hand only) before the first
    timed one; the Resources it made itself are closed at the end, a caller's are left open."""
    from handfit.api import FitOptions
    from handfit.eval.session import EvalSession
    from handfit.fitting import resources

    opened, closed = [], []

    class FakeResources:
        def __init__(self):
            opened.append(self)

        def detector(self, mode, max_hands):
            return "its detector"

        def close(self):
            closed.append(self)

    monkeypatch.setattr(resources, "Resources", FakeResources)
    recs = _records(tmp_path, 3)
    iters = []

    def fit(images, detections=None, intrinsics=None, options=None):
        iters.append((options.keypoint.iters, options.dense.iters))
        return fake_fit_batch(images, detections, intrinsics, options)

    fake_fit_batch.calls = []
    ev = evaluate(recs, FitOptions(), ("mediapipe", "dense"), detector=FakeDetector(recs), fit_batch=fit)
    full = (FitOptions().keypoint.iters, FitOptions().dense.iters)
    assert iters == [(2, 2), full, full]                              # images 0 and 1 detected, one warm-up
    assert ev.summary["dense"]["n"] == 2
    assert len(opened) == 1 and closed == opened                      # its own Resources, closed
    given = FakeResources()
    with EvalSession(FitOptions(), resources=given) as s:
        assert s.detector == "its detector" and s.resources is given
    assert closed == opened[:1]                                       # the caller's stays open
    with pytest.raises(TypeError):
        evaluate(recs, FitOptions(), ("mediapipe",), no_such_setting=1)


def test_the_verdict_reaches_per_image_csv_metrics_and_predictions(tmp_path):
    """Each fitted variant keeps its hand's verdict: per_image.csv's <v>_quality,
    <v>_quality_reasons and <v>_kp2d_max_rel, metrics.json's suspect count, predictions.json's
    quality, quality_reasons, kp2d_max_rel and detected_2d (the evidence). The keypoint stage of
    a dense fit is judged on its own distance from the evidence with FitOptions.quality."""
    import csv

    from handfit.api import FitOptions

    recs = _records(tmp_path)
    signals = {"start_rel": 0.01, "spread_rel": 0.01, "score": 0.9, "limit_frac": 0.0, "side_margin": None}

    def fit(images, detections=None, intrinsics=None, options=None):
        res = fake_fit_batch(images, detections, intrinsics, options)
        for img, r in zip(images, res):
            suspect = int(img.rgb[0, 0, 0]) == 1
            for h in r.hands:
                h.quality = "suspect" if suspect else "ok"
                h.quality_reasons = ["far from evidence: index4 0.40 box sides (40 px)"] if suspect else []
                h.metrics.update(signals, kp2d_max_rel=0.4 if suspect else 0.02, kp2d_max_px=40.0)
        return res

    fake_fit_batch.calls = []
    # the keypoint stage's joint 5 is ~9 px from its evidence in a box of about 100 px: beyond 0.05
    opts = FitOptions.from_values({"quality.max_rel": 0.05})
    ev = evaluate(recs, opts, ("mediapipe", "keypoint", "dense"), detector=FakeDetector(recs), fit_batch=fit,
                  warmup=False)
    assert ev.summary["dense"]["suspect"] == 1 and ev.summary["dense"]["n"] == 2
    assert ev.summary["keypoint"]["suspect"] == 2 and ev.summary["mediapipe"]["suspect"] is None
    paths = write_report(ev, tmp_path / "out", plot=False)
    assert "| n | suspect |" in summary_table(ev.summary)
    doc = json.loads(paths["metrics"].read_text())
    assert doc["dense"]["suspect"] == 1 and doc["keypoint"]["suspect"] == 2 and doc["mediapipe"]["suspect"] is None
    rows = {r["image"]: r for r in csv.DictReader(paths["csv"].open())}
    assert "mediapipe_quality" not in rows["0.png"]
    assert rows["0.png"]["dense_quality"] == "ok" and rows["0.png"]["dense_quality_reasons"] == ""
    assert rows["1.png"]["dense_quality"] == "suspect"
    assert rows["1.png"]["dense_quality_reasons"].startswith("far from evidence: index4")
    assert float(rows["1.png"]["dense_kp2d_max_rel"]) == pytest.approx(0.4)
    assert rows["0.png"]["keypoint_quality"] == "suspect" and "index_mcp" in rows["0.png"]["keypoint_quality_reasons"]
    assert 0.05 < float(rows["0.png"]["keypoint_kp2d_max_rel"]) < 0.25
    assert rows["2.png"]["dense_quality"] == "" and rows["2.png"]["dense_kp2d_max_rel"] == ""   # not detected
    pred = {h["image"]: h for h in json.loads(paths["predictions"].read_text())["hands"]}
    for name, q in (("0.png", "ok"), ("1.png", "suspect")):
        h = pred[name]
        assert h["dense"]["quality"] == q and h["keypoint"]["quality"] == "suspect"
        assert set(h["mediapipe"]) == {"keypoints_3d", "keypoints_2d"}        # MediaPipe's own: no verdict
        det = np.array(h["dense"]["detected_2d"])
        assert det.shape == (21, 2) and np.array_equal(det, np.array(h["keypoint"]["detected_2d"]))
        assert np.allclose(det, np.array(h["mediapipe"]["keypoints_2d"]))    # the matched detection
    assert pred["1.png"]["dense"]["quality_reasons"] == ["far from evidence: index4 0.40 box sides (40 px)"]
    assert pred["1.png"]["dense"]["kp2d_max_rel"] == pytest.approx(0.4)
