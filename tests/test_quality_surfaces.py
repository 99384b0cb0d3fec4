"""Where the verdict on every hand (handfit/fitting/quality.py) shows: result.json,
summary.jsonl (a count per input, photos and videos), the gallery's mark and filter, and the
sequence variants of handfit eval. The thresholds are FitOptions.quality: a fit with
``quality.max_rel`` near 0 makes every hand suspect, with no patching of the fit."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from stand_ins import truth_detector

# A quick fit: no multi-view refinement (the stand-in detector has no landmark model), no
# dense stage, few iterations.
QUICK = {"views": 0, "dense.enabled": False, "keypoint.iters": 20}


def _photo(folder: Path, names=("a.png", "b.png")) -> list:
    """A rendered right hand saved under each of ``names`` -> [(keypoints_2d, keypoints_3d)]."""
    from PIL import Image

    from handfit.models import load_model
    from handfit.train.synth import make_scene

    sc = make_scene(load_model("anny", side="right"), seed=3, size=(192, 256))
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(sc.image).save(folder / n)
    return [(sc.keypoints_2d.astype(np.float64), sc.keypoints.astype(np.float64))]


def _batch(sources, out: Path, values: dict):
    from handfit.batch.runner import run_batch
    from handfit.options import FitOptions

    return run_batch(sources, out, FitOptions.from_values({**QUICK, **values}))


def _summary(out: Path) -> list:
    return [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_photos_verdict_in_result_json_summary_and_gallery(tmp_path, monkeypatch):
    """Every hand of result.json has quality, quality_reasons, metrics.kp2d_max_px and
    kp2d_max_rel; summary.jsonl counts the suspect hands per input ("suspect"), and its
    hand_metrics carry each hand's verdict; a hand made suspect says why, everywhere."""
    from handfit.batch.runner import summary_line

    truth = _photo(tmp_path / "in")
    monkeypatch.setattr("handfit.detect.Detector", truth_detector(truth)[0])
    for name, values in (("default", {}), ("strict", {"quality.max_rel": 0.0001})):
        out = tmp_path / name
        report = _batch([tmp_path / "in"], out, values)
        assert report.exit_code == 0
        recs = _summary(out)
        assert [r["hands"] for r in recs] == [1, 1]
        for r in recs:
            doc = json.loads((out / r["key"] / "result.json").read_text())
            for h in doc["hands"]:
                assert h["quality"] in ("ok", "suspect") and isinstance(h["quality_reasons"], list)
                assert h["metrics"]["kp2d_max_px"] >= h["metrics"]["kp2d_px"] > 0
                assert h["metrics"]["kp2d_max_rel"] > 0
                assert (h["quality"] == "suspect") == bool(h["quality_reasons"])
            suspect = [h for h in doc["hands"] if h["quality"] == "suspect"]
            assert r["suspect"] == len(suspect)
            assert [m["quality"] for m in r["hand_metrics"]] == [h["quality"] for h in doc["hands"]]
            assert [m["quality_reasons"] for m in r["hand_metrics"]] == [h["quality_reasons"] for h in doc["hands"]]
            assert r["hand_metrics"][0]["kp2d_max_rel"] == pytest.approx(doc["hands"][0]["metrics"]["kp2d_max_rel"],
                                                                         abs=1e-4)
        if name == "default":       # the fit of true keypoints stays on them
            assert all(r["suspect"] == 0 for r in recs) and report.suspect == 0
        else:
            assert all(r["suspect"] == 1 for r in recs) and report.suspect == 2
            assert "2 hand(s), 2 suspect" in summary_line(report, out)
            for r in recs:
                (reason,) = [x for x in r["hand_metrics"][0]["quality_reasons"] if x.startswith("far from evidence")]
                assert "box sides" in reason
            page = (out / "index.html").read_text()
            cards = Cards.of(page)
            assert [c["data-suspect"] for c in cards] == ["1", "1"]
            assert page.count('class="badge suspect"') == 2 and "far from evidence" in page


@pytest.mark.slow
def test_video_summary_counts_suspect_frames(tmp_path, monkeypatch):
    """A video's summary line counts its suspect frame-hands; each track says which frames
    and how often each kind of reason came up."""
    av = pytest.importorskip("av")
    from handfit.models import load_model
    from handfit.train.synth import make_scene

    sc = make_scene(load_model("anny", side="right"), seed=3, size=(192, 256))
    with av.open(str(tmp_path / "clip.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 256, 192, "yuv420p"
        s.options = {"crf": "12"}
        for _ in range(3):
            for pkt in s.encode(av.VideoFrame.from_ndarray(sc.image, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    truth = [(sc.keypoints_2d.astype(np.float64), sc.keypoints.astype(np.float64))]
    monkeypatch.setattr("handfit.detect.Detector", truth_detector(truth)[0])
    _batch([tmp_path / "clip.mp4"], tmp_path / "out", {"quality.max_rel": 0.0001})
    (rec,) = _summary(tmp_path / "out")
    assert rec["status"] == "ok" and rec["hands"] == 3 and rec["suspect"] == 3
    (track,) = rec["hand_metrics"]
    assert track["quality"] == "suspect" and track["suspect"] == 3 and track["suspect_frames"] == [0, 1, 2]
    assert track["suspect_reasons"]["far from evidence"] == 3
    for f in sorted((tmp_path / "out" / "clip").glob("frame_*")):
        (hand,) = json.loads((f / "result.json").read_text())["hands"]
        assert hand["quality"] == "suspect" and hand["quality_reasons"][0].startswith("far from evidence")
    page = (tmp_path / "out" / "index.html").read_text()
    assert [c["data-suspect"] for c in Cards.of(page)] == ["3"] and "3 suspect frame(s)" in page


class Cards(HTMLParser):
    """The gallery's cards (their attributes), badges and header checkboxes."""

    def __init__(self):
        super().__init__()
        self.cards, self.badges, self.boxes = [], [], []

    @classmethod
    def of(cls, page: str) -> list:
        p = cls()
        p.feed(page)
        return p.cards

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class", "")
        if tag == "div" and cls == "card":
            self.cards.append(a)
        elif tag == "span" and "badge" in cls.split():
            self.badges.append(a)
        elif tag == "input" and a.get("type") == "checkbox":
            self.boxes.append(a)


def _records() -> list:
    ok = {"path": "ok.jpg", "key": "ok", "kind": "photo", "status": "ok", "hands": 1, "suspect": 0, "seconds": 1.0,
          "hand_metrics": [{"side": "right", "score": 0.9, "kp2d_px": 3.0, "kp2d_max_px": 7.0, "quality": "ok",
                            "quality_reasons": []}]}
    bad = {"path": "bad.jpg", "key": "bad", "kind": "photo", "status": "ok", "hands": 2, "suspect": 1, "seconds": 1.0,
           "hand_metrics": [{"side": "left", "score": 0.9, "quality": "ok", "quality_reasons": []},
                            {"side": "right", "score": 0.8, "quality": "suspect",
                             "quality_reasons": ["far from evidence: index4 0.31 box sides (120 px)",
                                                 "views disagree: spread 0.30 box sides"]}]}
    from handfit.batch.records import video_quality

    tracks = [{"side": "right", "score": 0.9, "track": 0, "frames": 13}]
    n = video_quality([(25, 0, ["far from evidence: index4 0.40 box sides (150 px)"]),
                       (50, 0, ["far from evidence: index4 0.35 box sides (130 px)", "low detection score 0.10"])],
                      tracks)
    vid = {"path": "clip.mp4", "key": "clip", "kind": "video", "status": "ok", "hands": 13, "suspect": n,
           "seconds": 5.0, "frames": 13, "hand_metrics": tracks}
    old = {"path": "old.jpg", "key": "old", "kind": "photo", "status": "ok", "hands": 1, "seconds": 1.0,
           "hand_metrics": [{"side": "right", "score": 0.9}]}                 # a summary from before the verdict
    err = {"path": "e.jpg", "key": "e", "kind": "photo", "status": "error", "hands": 0, "message": "unreadable"}
    return [ok, bad, vid, old, err]


def test_video_quality_per_track():
    from handfit.batch.records import reason_kind

    vid = _records()[2]
    (t,) = vid["hand_metrics"]
    assert vid["suspect"] == 2 and t["suspect"] == 2 and t["suspect_frames"] == [25, 50]
    assert t["suspect_reasons"] == {"far from evidence": 2, "low detection score": 1}
    assert reason_kind("pose against its limits: 60% of its angles") == "pose against its limits"
    assert reason_kind("side conflicts with its track") == "side conflicts with its track"


def test_gallery_marks_suspect_inputs_and_filters_them(tmp_path):
    """Each card carries data-suspect; an input with a suspect hand (or frame) gets a badge whose
    tooltip gives the reasons, which also show under it; the header has an "only suspect" box."""
    from handfit.batch.gallery import SCRIPT, render

    page = render(tmp_path, _records())
    p = Cards()
    p.feed(page)
    assert [c["data-suspect"] for c in p.cards] == ["0", "1", "2", "0", "0"]
    sus = [b for b in p.badges if "suspect" in b["class"].split()]
    assert len(sus) == 2
    assert "hand 1 (right): far from evidence: index4 0.31 box sides (120 px); views disagree" in sus[0]["title"]
    assert sus[1]["title"].startswith("track 0 (right): 2 suspect frame(s) (far from evidence ×2, "
                                      "low detection score ×1): frames 25, 50")
    assert re.search(r'<div class="why"><div>hand 1 \(right\): far from evidence', page)
    assert any(b.get("id") == "sus" for b in p.boxes) and "only suspect (2)" in page
    assert "5 inputs" in page and "3 suspect" in page
    # the table's quality column: the phrase for a photo hand, the frame count for a track
    assert '<td class="sus" title="far from evidence: index4 0.31 box sides (120 px); views disagree' in page
    assert re.search(r'<td class="sus" title="2 suspect frame\(s\)[^"]*">2 frames</td>', page)
    assert "'sus'" in SCRIPT and "dataset.suspect" in SCRIPT


def test_gallery_filter_script_hides_cards_without_suspect_hands(tmp_path):
    """Run the gallery's filter in node against a minimal stand-in DOM (skipped without node)."""
    import shutil
    import subprocess

    from handfit.batch.gallery import SCRIPT

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    cards = [{"status": "ok", "suspect": "0", "path": "ok.jpg"}, {"status": "ok", "suspect": "1", "path": "bad.jpg"},
             {"status": "error", "suspect": "0", "path": "e.jpg"}]
    js = SCRIPT + """
var cards = %s.map(function(d){return {dataset: d, style: {display: ''}}});
var boxes = ['ok','no_hand','error'].map(function(s){return {value: s, checked: true}});
var els = {q: {value: ''}, sus: {checked: false}};
var document = {getElementById: function(i){return els[i]},
  querySelectorAll: function(sel){return sel === '.card' ? cards : boxes}};
function shown(){filt(); return cards.filter(function(c){return c.style.display === ''})
  .map(function(c){return c.dataset.path}).join(',')}
var out = [shown()];
els.sus.checked = true; out.push(shown());
els.sus.checked = false; boxes[0].checked = false; out.push(shown());
console.log(out.join('|'));
""" % json.dumps(cards)
    r = subprocess.run([node, "-e", js], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok.jpg,bad.jpg,e.jpg|bad.jpg|e.jpg"


def test_sequence_variants_keep_their_verdict():
    """handfit eval --sequence: the track variants' HandResults carry quality, quality_reasons,
    kp2d_max_rel and their evidence into the predictions (eval.sequence._pred)."""
    import types

    from handfit.eval.sequence import _pred

    det = np.arange(42, dtype=float).reshape(21, 2)
    h = types.SimpleNamespace(keypoints_3d=np.zeros((21, 3)), keypoints_2d_fitted=det + 1, seconds=0.5, side="left",
                              keypoints_2d_detected=det, quality="suspect",
                              quality_reasons=["side conflicts with its track"], metrics={"kp2d_max_rel": 0.03})
    p = _pred(h)
    assert p["quality"] == "suspect" and p["quality_reasons"] == ["side conflicts with its track"]
    assert p["kp2d_max_rel"] == 0.03 and np.array_equal(p["detected_2d"], det)
    assert set(p) >= {"kp3d", "kp2d", "seconds", "side"}
