"""Resources: built once per key, shared between threads, closed together."""

from __future__ import annotations

import threading
import time

import torch

from handfit.fitting.resources import Resources
from stand_ins import StandIn


def test_threads_build_each_resource_once(monkeypatch):
    built = []

    class SlowDetector(StandIn):
        def __init__(self, max_hands=None, mode="fast"):
            built.append(mode)
            time.sleep(0.05)  # wide enough for a racing thread to slip in without the lock
            self.closed = False

        def close(self):
            self.closed = True

    monkeypatch.setattr("handfit.detect.Detector", SlowDetector)
    res = Resources()
    got = []
    threads = [threading.Thread(target=lambda: got.append(res.detector("fast"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == ["fast"] and len(got) == 8 and all(g is got[0] for g in got)
    other = res.detector("thorough")
    assert other is not got[0] and built == ["fast", "thorough"]
    res.close()
    assert got[0].closed and other.closed
    assert res.detector("fast") is not got[0]          # closed resources are built anew


def test_models_regressors_and_priors_are_shared(res):
    m = res.model("anny", "right")
    assert res.model("anny", "right") is m and res.model("ANNY", "right", device="cpu") is m
    assert res.model("anny", "right", dtype=torch.float64) is not m
    assert res.regressor(m) is res.regressor(m)
    assert res.texture_prior("none", "anny") is None
    assert res.texture_prior("default", "mano") is None    # the shipped prior is Anny's atlas
    prior = res.texture_prior("default", "anny")
    assert prior is not None and res.texture_prior("default", "anny") is prior


def test_fit_uses_the_resources_it_is_given(monkeypatch, res):
    """handfit.fit(resources=...) takes its detector from them, not from a hidden cache."""
    import numpy as np

    import handfit

    asked = []

    class NoHands(StandIn):
        def detect(self, rgb, mode=None):
            return []

    monkeypatch.setattr(res, "detector", lambda mode="thorough", max_hands=None: asked.append(mode) or NoHands())
    r = handfit.fit(np.zeros((32, 32, 3), np.uint8), resources=res, detect="fast")
    assert r.hands == [] and asked == ["fast"]
