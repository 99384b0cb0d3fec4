"""The learned prior in the fit: prior_fill on a rendered mesh, and the --texture-prior option."""

import pytest
import torch

from handfit import render as R
from handfit.options import FitOptions, OptionError
from handfit.texture.fill import prior_fill, resolve_prior
from handfit.texture.prior import PriorConfig, TexturePrior, save_prior

TINY = PriorConfig(dim=16, heads=2, layers=1, cross_layers=1, grid=4, freqs=3, channels=(8,), size=32)


def test_prior_fill_on_a_rendered_hand():
    from handfit.models import load_model

    model = load_model("anny", side="right", device=torch.device("cpu"), dtype=torch.float32)
    p = model.zero_params(2)
    p["transl"] = torch.tensor([[0.0, 0.05, 0.45], [0.02, 0.05, 0.5]])
    v = model(**p).vertices
    K = torch.tensor([[150.0, 0, 47.5], [0, 150.0, 47.5], [0, 0, 1]])
    g = R.rasterize_mesh(v, model.faces, K, (96, 96), uv=model.uv_coords, uv_faces=model.uv_faces, points=True,
                         backend="cpu")
    photo = torch.tensor([0.8, 0.6, 0.5]).expand(2, 96, 96, 3).clone()
    photo[1] = torch.tensor([0.4, 0.3, 0.2])
    net = TexturePrior(TINY).eval()   # untrained: the samples' fill
    tex = prior_fill(net, photo, g, size=64)
    assert tex.shape == (2, 64, 64, 3)
    # A flat-coloured photo gives that colour everywhere, hand by hand.
    assert torch.allclose(tex[0], photo[0, 0, 0].expand_as(tex[0]), atol=1e-3)
    assert torch.allclose(tex[1], photo[1, 0, 0].expand_as(tex[1]), atol=1e-3)


def test_texture_prior_option(tmp_path):
    assert FitOptions().texture_prior == "default"
    assert FitOptions(texture_prior="none").texture_prior == "none"
    with pytest.raises(OptionError) as e:
        FitOptions(texture_prior=str(tmp_path / "missing.pt"))
    assert e.value.field == "texture_prior"
    path = tmp_path / "p.pt"
    save_prior(TexturePrior(TINY), path)
    assert isinstance(resolve_prior(str(path), "cpu", torch.float32), TexturePrior)
    assert resolve_prior("none", "cpu", torch.float32) is None


def test_cli_names_the_flag(tmp_path):
    from click.testing import CliRunner

    from handfit.cli import main

    r = CliRunner().invoke(main, ["fit", "x.jpg", "--texture-prior", str(tmp_path / "nope.pt")])
    assert r.exit_code == 2 and "--texture-prior" in r.output
