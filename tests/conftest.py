"""Shared fixtures: devices, dtypes, the dev-data folder and a closed-after-use Resources.

Tests over about a second carry ``@pytest.mark.slow``; ``make test-quick`` skips them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEV_DATA = Path(os.environ.get("HANDFIT_DEV_DATA", REPO.parent / "shared" / "data" / "dev"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Run the test once per available device (cpu, and cuda when present)."""
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def dev_data():
    """Path to ../shared/data/dev; the test skips when it is absent."""
    if not DEV_DATA.is_dir():
        pytest.skip(f"dev data not found at {DEV_DATA}")
    return DEV_DATA


@pytest.fixture
def res():
    """A fresh :class:`handfit.fitting.resources.Resources` for one test, closed after
    it (its detectors hold MediaPipe graphs and their threads)."""
    from handfit.fitting.resources import Resources

    with Resources() as resources:
        yield resources


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
