"""The learned texture prior (handfit/texture/prior.py): shapes, padding, batches, gradients, files."""

import torch

from handfit.texture.prior import PriorConfig, TexturePrior, load_prior, pack_samples, save_prior
from handfit.texture.unwrap import UVSamples

TINY = PriorConfig(dim=32, heads=2, layers=1, cross_layers=1, grid=8, freqs=4, channels=(16, 8), size=64)


def sample_set(B=2, N=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(B, N, 2, generator=g)
    rgb = torch.rand(B, N, 3, generator=g)
    conf = torch.rand(B, N, generator=g)
    cos = torch.rand(B, N, generator=g)
    mask = torch.ones(B, N, dtype=torch.bool)
    return uv, rgb, conf, cos, mask


def net(seed=0):
    torch.manual_seed(seed)
    m = TexturePrior(TINY).double()
    # Give the zero-initialised output layer weights so every path is exercised.
    torch.nn.init.normal_(m.out.weight, std=0.1)
    return m.eval()


def test_shapes_and_range():
    m = net()
    uv, rgb, conf, cos, mask = [t.double() if t.is_floating_point() else t for t in sample_set()]
    tex = m(uv, rgb, conf, cos, mask)
    assert tex.shape == (2, 64, 64, 3)
    assert tex.min() >= 0 and tex.max() <= 1


def test_untrained_prior_returns_the_fill():
    m = TexturePrior(TINY).double().eval()   # output layer at zero: the push-pull fill of the samples
    uv, rgb, conf, cos, mask = [t.double() if t.is_floating_point() else t for t in sample_set(B=1)]
    rgb[:] = torch.tensor([0.7, 0.5, 0.4], dtype=torch.float64)
    tex = m(uv, rgb, conf, cos, mask)
    assert torch.allclose(tex, rgb[0, 0].expand_as(tex), atol=1e-6)


def test_padding_changes_nothing():
    m = net()
    uv, rgb, conf, cos, mask = [t.double() if t.is_floating_point() else t for t in sample_set(B=1, N=30)]
    ref = m(uv, rgb, conf, cos, mask)
    pad = 17  # garbage entries, masked out
    g = torch.Generator().manual_seed(5)
    cat = lambda a, shape: torch.cat([a, torch.rand(1, pad, *shape, generator=g).double() * 7 - 3], 1)
    out = m(cat(uv, (2,)), cat(rgb, (3,)), cat(conf[..., None], (1,))[..., 0], cat(cos[..., None], (1,))[..., 0],
            torch.cat([mask, torch.zeros(1, pad, dtype=torch.bool)], 1))
    assert torch.allclose(out, ref, atol=1e-9)


def test_batch_independence():
    m = net()
    uv, rgb, conf, cos, mask = [t.double() if t.is_floating_point() else t for t in sample_set(B=3)]
    mask[1, 25:] = False  # a shorter set in the middle of the batch
    full = m(uv, rgb, conf, cos, mask)
    for b in range(3):
        one = m(uv[b:b + 1], rgb[b:b + 1], conf[b:b + 1], cos[b:b + 1], mask[b:b + 1])
        assert torch.allclose(one, full[b:b + 1], atol=1e-9)
    rgb2 = rgb.clone()
    rgb2[2] = 1 - rgb2[2]
    again = m(uv, rgb2, conf, cos, mask)
    assert torch.allclose(again[:2], full[:2], atol=1e-9) and not torch.allclose(again[2], full[2])


def test_empty_set_gives_a_texture():
    m = net()
    uv, rgb, conf, cos, mask = [t.double() if t.is_floating_point() else t for t in sample_set(B=2)]
    mask[0] = False
    tex = m(uv, rgb, conf, cos, mask)
    assert torch.isfinite(tex).all()


def test_gradients_flow_to_every_parameter_and_the_inputs():
    m = net().train()
    uv, rgb, conf, cos, mask = [t.double() if t.is_floating_point() else t for t in sample_set()]
    rgb.requires_grad_(True)
    m(uv, rgb, conf, cos, mask).square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert rgb.grad.abs().sum() > 0


def test_pack_samples_pools_and_pads():
    s = UVSamples(batch=torch.tensor([0, 0, 0, 1]), uv=torch.tensor([[0.1, 0.1], [0.105, 0.1], [0.9, 0.9], [0.5, 0.5]]),
                  rgb=torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0.5]]),
                  cos=torch.ones(4), weight=torch.tensor([1.0, 1.0, 0.5, 1.0]))
    p = pack_samples(s, 2, texels=16)
    assert p["uv"].shape == (2, 2, 2) and p["mask"].tolist() == [[True, True], [True, False]]
    first = p["rgb"][0, 0]  # the heaviest texel: the two samples near (0.1, 0.1), averaged
    assert torch.allclose(first, torch.tensor([0.5, 0.5, 0.0]))
    assert p["conf"][1, 1] == 0


def test_save_and_load(tmp_path):
    m = net().float()
    save_prior(m, tmp_path / "p.pt")
    back = load_prior(tmp_path / "p.pt")
    assert back.config == m.config
    uv, rgb, conf, cos, mask = sample_set()
    assert torch.allclose(back(uv, rgb, conf, cos, mask), m(uv, rgb, conf, cos, mask))
