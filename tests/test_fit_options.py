"""``handfit.fit`` with every option its docstring lists, and its camera in both forms."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import handfit
from handfit.errors import UsageError
from handfit.fitting.resources import Resources
from handfit.options import DenseStage, KeypointStage

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hand.jpg"
CAM4 = (610.0, 600.0, 300.0, 250.0)
K3 = np.array([[590.0, 0.0, 330.0], [0.0, 580.0, 230.0], [0.0, 0.0, 1.0]])


def test_a_camera_is_four_numbers_or_a_3x3_matrix():
    from handfit.api import _cameras, camera_matrix

    K = camera_matrix(CAM4)
    assert K.dtype == np.float64 and np.array_equal(K, [[610, 0, 300], [0, 600, 250], [0, 0, 1]])
    assert np.array_equal(camera_matrix(K3.tolist()), K3)
    for bad in ((1, 2, 3), (0, 600, 300, 250), (610, 600, np.nan, 250), np.eye(4), [[1, 0, 0], [0, 1, 0], [1, 0, 1]],
                "fx", None):
        with pytest.raises(UsageError, match="intrinsics"):
            camera_matrix(bad)
    # one camera for every image, or one (or None) per image
    assert all(np.array_equal(k, K3) for k in _cameras(K3, 3)) and len(_cameras(CAM4, 2)) == 2
    one, none, three = _cameras([CAM4, None, K3], 3)
    assert np.array_equal(one, K) and none is None and np.array_equal(three, K3)
    assert len(_cameras([K3, K3, K3], 3)) == 3 and len(_cameras([CAM4] * 4, 4)) == 4
    assert _cameras(None, 2) is None
    with pytest.raises(UsageError, match="got 2 intrinsics for 3 images"):
        _cameras([K3, K3], 3)


class _NoHands(Resources):
    """Resources whose detector finds nothing, without loading MediaPipe."""

    def detector(self, *args, **kw):
        return type("Blind", (), {"detect": lambda self, rgb: []})()


def test_fit_takes_its_camera_as_four_numbers_or_a_matrix():
    """The result's K is the camera given (on a photo where no hand is found: no fit runs)."""
    blank = np.full((120, 160, 3), 90, np.uint8)
    with _NoHands() as res:
        for cam, K in ((CAM4, handfit.api.camera_matrix(CAM4)), (K3, K3), (K3.tolist(), K3)):
            r = handfit.fit(blank, intrinsics=cam, resources=res, device="cpu", focal=999.0)
            assert r.hands == [] and np.array_equal(r.K, K)
        # FitOptions.intrinsics is the same camera, four numbers
        r = handfit.fit(blank, options=handfit.FitOptions(intrinsics=CAM4, device="cpu"), resources=res)
        assert np.array_equal(r.K, handfit.api.camera_matrix(CAM4))
        # fit_batch: one camera for all photos, or one (or None) per photo
        rs = handfit.fit_batch([blank, blank], intrinsics=CAM4, resources=res, device="cpu")
        assert all(np.array_equal(r.K, handfit.api.camera_matrix(CAM4)) for r in rs)
        a, b = handfit.fit_batch([blank, blank], intrinsics=[K3, None], resources=res, device="cpu", focal=400.0)
        assert np.array_equal(a.K, K3) and b.K[0, 0] == 400.0
        with pytest.raises(UsageError, match="intrinsics"):
            handfit.fit(blank, intrinsics=(1.0, 2.0), resources=res, device="cpu")


class SpyResources(Resources):
    """Resources that note what the fit asked for: detector modes, models, priors, renderers
    and the views each detection was refined with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def detector(self, mode="thorough", *args, **kw):
        self.calls.append(("detector", mode))
        return _SpyDetector(super().detector(mode, *args, **kw), self.calls)

    def model(self, name="anny", side="right", mano_path=None, device=None, *args, **kw):
        self.calls.append(("model", name, str(device)))
        return super().model(name, side, mano_path, device, *args, **kw)

    def texture_prior(self, spec, *args, **kw):
        self.calls.append(("texture_prior", spec))
        return super().texture_prior(spec, *args, **kw)

    def render_context(self, device, backend="auto"):
        self.calls.append(("render", str(device), backend))
        return super().render_context(device, backend)


class _SpyDetector:
    def __init__(self, det, calls):
        self._det, self._calls = det, calls

    def evidence(self, rgb, dets, views, *a, **kw):
        self._calls.append(("evidence", views))
        return self._det.evidence(rgb, dets, views, *a, **kw)

    def __getattr__(self, name):
        return getattr(self._det, name)


def _documented() -> set:
    """The parameters and options ``handfit.fit``'s docstring lists."""
    doc = handfit.fit.__doc__
    params = set(re.findall(r"^\s{4}(\w+):", doc, re.M))
    listed = re.search(r":class:`FitOptions` \(([^);]*)[);]", doc).group(1)
    return (params - {"image", "options"}) | {w.strip() for w in listed.split(",")}


def _two_hands() -> np.ndarray:
    """(480,640,3): the middle of the example photo beside its mirror image: a right and a left hand."""
    img = np.asarray(Image.open(EXAMPLE).convert("RGB"))[:, 160:480]
    return np.ascontiguousarray(np.concatenate([img, img[:, ::-1]], 1))


@pytest.fixture
def spy():
    with SpyResources() as res:
        yield res


@pytest.mark.slow
def test_fit_with_every_documented_option(spy, tmp_path, monkeypatch):
    two = _two_hands()
    steps = []
    cheap = dict(device="cpu", side_check_below=0.0, views=0, keypoint=KeypointStage(iters=5),
                 dense=DenseStage(enabled=False))
    kw = dict(progress=lambda *a: steps.append(a), boxes=None, intrinsics=CAM4, resources=spy,
              device="cpu", max_hands=1, detect="fast", side_check_below=1.0, side_check_iters=3, model="anny",
              focal=900.0, renderer="cpu", crop_size=65, texture_size=32, texture_prior="none", views=2,
              spread_sigma=0.05, keypoint=KeypointStage(iters=7),
              dense=DenseStage(iters=2, texture_iters=1, texture_from="fitted"))
    documented = _documented()
    assert documented >= {"intrinsics", "boxes", "max_hands", "keypoint", "dense"}   # the docstring was read
    missing = documented - set(kw) - {"mano"}           # mano: its own fit below, it needs a MANO file
    assert not missing, f"the test does not call fit with {sorted(missing)}"
    res = spy
    # Each option's effect below, where a cheap fit shows it (side_check_iters and spread_sigma: not)

    r = handfit.fit(two, **kw)
    assert r.model == "anny" and r.hands_found == 2 and len(r.hands) == 1                    # model, max_hands
    h = r.hands[0]
    assert np.array_equal(r.K, handfit.api.camera_matrix(CAM4))                 # intrinsics, over focal
    assert h.vertices.shape == (1609, 3) and h.texture.shape == (32, 32, 3)     # model, texture_size
    assert h.side_losses is not None and h.side_source == "fit"                 # side_check_below
    assert h.metrics["keypoint_iters"] == 7 and "dense" in h.losses             # keypoint, dense
    assert h.metrics["texture_iters"] == 1
    # crop_size: 65 is not a multiple of the geometry phase's downsampling, so no fine iterations
    assert h.metrics["dense_iters"] == 2
    assert {s[0] for s in steps} == {"keypoints", "dense"}                      # progress
    assert ("keypoints", h.side, 7, 7) in steps
    assert ("detector", "fast") in res.calls and ("detector", "thorough") not in res.calls   # detect
    assert ("evidence", 2) in res.calls                                           # views
    assert ("texture_prior", "none") in res.calls                               # texture_prior
    assert ("render", "cpu", "cpu") in res.calls                                # renderer
    assert {c[2] for c in res.calls if c[0] == "model"} == {"cpu"}              # device

    # focal, when no intrinsics are given; boxes: only the hand in the box is fitted
    r = handfit.fit(two, focal=900.0, resources=res, **cheap)
    assert r.K[0, 0] == r.K[1, 1] == 900.0 and r.hands_found == 2 and "dense" not in r.hands[0].losses
    box = next(h.bbox_xyxy for h in r.hands if h.side == "right")
    r = handfit.fit(two, boxes=[tuple(box)], resources=res, **cheap)
    assert r.hands_found == 1 and r.hands[0].side == "right"
    assert abs(r.hands[0].bbox_xyxy - box).max() < 30
    # intrinsics as a 3x3 matrix
    r = handfit.fit(two, intrinsics=K3, max_hands=1, resources=res, **cheap)
    assert np.array_equal(r.K, K3) and len(r.hands) == 1

    # mano: a MANO-format file (a random one; MANO's own may not be shipped)
    from test_mano import random_mano

    monkeypatch.setenv("HANDFIT_CACHE", str(tmp_path / "cache"))  # its UV atlas is built there
    np.savez(tmp_path / "MANO_RIGHT.npz", **random_mano())
    r = handfit.fit(two, mano=str(tmp_path), max_hands=1, resources=res, **cheap)
    assert r.model == "mano" and r.hands[0].vertices.shape == (780, 3)
