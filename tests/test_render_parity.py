"""Our CPU backend against nvdiffrast on the same scenes (CUDA only).

The numbers come from bench/render_parity.py, which prints them; run
``python bench/render_parity.py`` on a GPU machine to see them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.cuda


def _parity():
    path = Path(__file__).resolve().parents[1] / "bench" / "render_parity.py"
    spec = importlib.util.spec_from_file_location("render_parity", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("index", [0, 1, 2])
def test_cpu_backend_matches_nvdiffrast(index):
    mod = _parity()
    name, (pos, tri, uv, uvf), res = list(mod.scenes(torch.device("cuda")))[index]
    m = mod.compare(pos, tri, uv, uvf, res)
    assert m["covered"] > 0.05, (name, m)
    # Same triangle on >= 99.9% of pixels (differences: pixel centres within
    # float rounding of an edge, fill-rule ties).
    assert m["id_match"] >= 0.999, (name, m)
    # Where the triangle agrees, values agree to float32 precision.
    assert m["bary_max"] < 1e-3 and m["depth_max"] < 1e-4 and m["tex_max"] < 2e-3, (name, m)
    assert m["aa_close"] >= 0.995, (name, m)
    # Gradients of an L2 image loss: close in direction and size.
    assert m["g_pos_cos"] > 0.99 and m["g_pos_rel"] < 0.1, (name, m)
    assert m["g_tex_rel"] < 0.02, (name, m)
