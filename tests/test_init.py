"""Initialisation: the shipped regressor, the IK fallback and translation from 2D."""

from __future__ import annotations

import pytest
import torch

from handfit.camera import project
from handfit.fitting.init import init_translation, inverse_kinematics, load_regressor, regress
from handfit.train.regressor import sample_batch
from handfit.models import load_model


def _err_mm(model, go, pose, shape, target):
    kp = model(go, pose, shape, torch.zeros(go.shape[0], 3)).keypoints
    return ((kp - kp[:, :1]) - (target - target[:, :1])).norm(dim=-1).mean() * 1000


def test_translation_from_2d_is_exact_without_noise():
    gen = torch.Generator().manual_seed(0)
    kp = torch.randn(4, 21, 3, generator=gen) * 0.05
    t = torch.tensor([[0.1, -0.05, 0.6], [0.0, 0.0, 0.4], [-0.2, 0.1, 0.9], [0.05, 0.2, 0.5]])
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]).expand(4, 3, 3)
    uv = project(kp + t[:, None], K)
    assert torch.allclose(init_translation(kp, uv, K), t, atol=1e-4)


def test_shipped_regressor_beats_rest_pose():
    for side in ("right", "left"):
        model = load_model("anny", side=side)
        net = load_regressor(model, "cpu")
        assert net is not None, "handfit/weights/regressor_anny.pt missing or mismatched"
        x, R, pose, shape, kp = sample_batch(load_model("anny"), 64, torch.Generator().manual_seed(7))
        if side == "left":  # the same hands, mirrored
            x, kp = x * torch.tensor([-1.0, 1, 1]), kp * torch.tensor([-1.0, 1, 1])
        go, p, s = regress(model, net, x)
        err = _err_mm(model, go, p, s, kp)
        rest = _err_mm(model, go, torch.zeros_like(p), torch.zeros_like(s), kp)
        assert err < 20, f"{side}: {err:.1f} mm"
        assert err < 0.6 * rest


@pytest.mark.slow
def test_ik_fallback_fits_landmarks():
    model = load_model("anny")
    x, R, pose, shape, kp = sample_batch(model, 8, torch.Generator().manual_seed(3))
    go, p, s = inverse_kinematics(model, kp, iters=150)
    err = _err_mm(model, go, p, s, kp)
    start = _err_mm(model, torch.zeros(8, 3), torch.zeros_like(p), torch.zeros_like(s), kp)
    assert err < 0.5 * start, (float(err), float(start))


def test_missing_weights_warn_and_name_the_file(tmp_path, monkeypatch):
    """An install without its weights must say so, never fall back silently."""
    import pytest

    import handfit.weights as W
    from handfit.fitting.init import load_regressor as _read_regressor
    from handfit.models import load_model
    from handfit.models.anny import shipped_keypoint_offsets

    assert (W.WEIGHTS_DIR / "regressor_anny.pt").is_file()      # shipped inside the package
    assert (W.WEIGHTS_DIR / "keypoints_anny.pt").is_file()
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path)
    model = load_model("anny")
    with pytest.warns(UserWarning, match=r"regressor_anny\.pt is missing"):
        assert _read_regressor(model, "cpu", torch.float32) is None
    with pytest.warns(UserWarning, match=r"keypoints_anny\.pt is missing"):
        assert shipped_keypoint_offsets() is None
