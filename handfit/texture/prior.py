"""The learned texture prior: sparse UV-RGB samples -> a dense UV texture.

After Karvounas et al. (WACV 2026, arXiv 2508.09629): the visible pixels of a
hand, unwrapped onto its mesh, are a variable-length set of (uv, rgb)
samples. A transformer encodes the set; a coarse grid of learned UV queries
cross-attends to it; a small convolutional decoder upsamples the grid to a
``size``×``size`` texture. It only ever sees uv coordinates, so it works for
any UV atlas (Anny's, MANO's), though weights are trained for one.

Two choices beyond the paper, both to train fast on a CPU:

* the samples are pooled into UV texels before the transformer
  (:func:`pack_samples`), bounding the set to ``max_tokens`` entries;
* the decoder predicts a *correction* (in logit space) of the samples'
  push-pull fill at the decoder's last resolution; every decoder level
  also sees the fill at its own resolution. The last layer starts at zero,
  so an untrained prior returns that fill and training only has to learn
  what the fill gets wrong (unseen regions, chart seams).

A sample set is padded to a common length: ``uv`` (B,N,2) in [0,1], ``rgb``
(B,N,3) in [0,1], ``conf`` (B,N) >= 0, ``cos`` (B,N) view cosine and
``mask`` (B,N) bool (True = a real sample). Padded entries change nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .unwrap import UVSamples, fill_push_pull, splat


@dataclass
class PriorConfig:
    """Size of the texture prior (stored in its checkpoints)."""

    dim: int = 128          # token width
    heads: int = 4
    layers: int = 3         # self-attention layers over the samples
    cross_layers: int = 2   # cross-attention layers from the UV query grid
    grid: int = 16          # query grid side (coarse UV resolution)
    freqs: int = 8          # Fourier frequencies of uv (2^0 .. 2^(freqs-1) times pi)
    channels: tuple = (48, 32, 16)  # decoder widths at 2x, 4x, 8x the grid
    size: int = 256         # output texture side

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if self.size < self.grid:
            raise ValueError("size must be at least grid")


def fourier(uv: torch.Tensor, freqs: int) -> torch.Tensor:
    """(...,2) in [0,1] -> (...,2+4*freqs): uv, then sin and cos of 2^k*pi*uv."""
    k = (2.0 ** torch.arange(freqs, device=uv.device, dtype=uv.dtype)) * math.pi  # (F,)
    x = uv[..., None] * k                                                           # (...,2,F)
    return torch.cat([uv, x.sin().flatten(-2), x.cos().flatten(-2)], -1)


class Block(nn.Module):
    """Pre-norm attention (self-attention when kv is None) then an MLP, both residual.

    Written on scaled_dot_product_attention: nn.MultiheadAttention's masked
    fast path is several times slower on the CPU."""

    def __init__(self, dim: int, heads: int, cross: bool = False):
        super().__init__()
        self.heads = heads
        self.nq = nn.LayerNorm(dim)
        self.nk = nn.LayerNorm(dim) if cross else None
        self.q, self.kv, self.o = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.nm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, kv, pad):
        """x (B,Q,D), kv (B,N,D) or None (= x), pad (B,N) bool True = ignore -> (B,Q,D)"""
        B, Q, D = x.shape
        h = self.nq(x)
        k, v = self.kv(h if kv is None else self.nk(kv)).chunk(2, -1)
        split = lambda t: t.reshape(B, -1, self.heads, D // self.heads).transpose(1, 2)
        bias = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, float("-inf"))
        a = F.scaled_dot_product_attention(split(self.q(h)), split(k), split(v), attn_mask=bias[:, None, None, :])
        x = x + self.o(a.transpose(1, 2).reshape(B, Q, D))
        return x + self.mlp(self.nm(x))


class TexturePrior(nn.Module):
    """Sparse UV-RGB samples (B,N,·) -> texture (B,size,size,3) in [0,1]."""

    def __init__(self, config: PriorConfig | None = None, **kw):
        super().__init__()
        c = self.config = config or PriorConfig(**kw)
        fin = 2 + 4 * c.freqs
        self.embed = nn.Sequential(nn.Linear(fin + 6, c.dim), nn.GELU(), nn.Linear(c.dim, c.dim))
        self.encoder = nn.ModuleList(Block(c.dim, c.heads) for _ in range(c.layers))
        self.query = nn.Parameter(torch.zeros(c.grid * c.grid, c.dim))
        self.query_pos = nn.Linear(fin, c.dim)
        self.cross = nn.ModuleList(Block(c.dim, c.heads, cross=True) for _ in range(c.cross_layers))
        self.norm = nn.LayerNorm(c.dim)
        ups, cin = [], c.dim + 4   # + the push-pull fill (rgb) and its confidence
        for cout in c.channels:
            ups.append(nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GELU(),
                                     nn.Conv2d(cout, cout, 3, padding=1), nn.GELU()))
            cin = cout + 4
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(cin, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        t = (torch.arange(c.grid, dtype=torch.float32) + 0.5) / c.grid
        gv, gu = torch.meshgrid(t, t, indexing="ij")
        self.register_buffer("grid_uv", torch.stack([gu, gv], -1).reshape(-1, 2), persistent=False)

    def fill(self, uv, rgb, conf, mask, size: int) -> torch.Tensor:
        """Push-pull fill of the samples at ``size``² -> (B,4,size,size): rgb and confidence."""
        B, N = mask.shape
        w = torch.where(mask, conf, torch.zeros_like(conf))
        s = UVSamples(batch=torch.arange(B, device=uv.device).repeat_interleave(N), uv=uv.reshape(-1, 2),
                      rgb=torch.where(mask[..., None], rgb, torch.zeros_like(rgb)).reshape(-1, 3),
                      cos=w.reshape(-1), weight=w.reshape(-1))
        tex, cf = splat(s, B, size)
        total = cf.sum((1, 2))                                              # (B,1)
        mean = (tex * cf).sum((1, 2)) / total.clamp(min=1e-6)
        mean = torch.where(total > 0, mean, mean.new_tensor([0.8, 0.62, 0.52]))
        filled = fill_push_pull(tex, cf, prior=mean)
        return torch.cat([filled, cf.clamp(max=1.0)], -1).permute(0, 3, 1, 2)

    def forward(self, uv, rgb, conf, cos, mask) -> torch.Tensor:
        """uv (B,N,2), rgb (B,N,3), conf (B,N), cos (B,N), mask (B,N) bool -> (B,size,size,3)"""
        c = self.config
        B = uv.shape[0]
        pad = ~mask
        # Padded entries are zeroed before the embedding and ignored by attention.
        z = lambda x: torch.where(mask.view(*mask.shape, *([1] * (x.dim() - 2))), x, torch.zeros_like(x))
        feats = torch.cat([fourier(z(uv), c.freqs), z(rgb), z(conf)[..., None], z(cos)[..., None],
                           torch.ones_like(conf)[..., None]], -1)
        if not bool(mask.any(1).all()):  # an empty set: one dummy token so attention has a key
            pad = pad.clone()
            pad[:, 0] = False
        x = self.embed(feats)
        for blk in self.encoder:
            x = blk(x, None, pad)
        q = (self.query + self.query_pos(fourier(self.grid_uv.to(uv.dtype), c.freqs)))[None].expand(B, -1, -1)
        for blk in self.cross:
            q = blk(q, x, pad)
        h = self.norm(q).transpose(1, 2).reshape(B, c.dim, c.grid, c.grid)
        side = c.grid
        for up in self.ups:
            h = up(torch.cat([h, self.fill(uv, rgb, conf, mask, side)], 1))
            side *= 2
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        base = self.fill(uv, rgb, conf, mask, side)
        logit = torch.logit(base[:, :3].clamp(0.01, 0.99)) + self.out(torch.cat([h, base], 1))
        tex = torch.sigmoid(logit)
        if side != c.size:
            tex = F.interpolate(tex, size=(c.size, c.size), mode="bilinear", align_corners=False)
        return tex.permute(0, 2, 3, 1)


def pack_samples(samples: UVSamples, batch_size: int, max_tokens: int = 512, texels: int = 64,
                 generator: torch.Generator | None = None):
    """Pool UVSamples into at most ``max_tokens`` texel tokens per hand, padded.

    Each observed texel of a ``texels``² grid becomes one token: its weighted
    mean uv, colour and view cosine, and conf 1. (Not the summed weight: that
    grows with the crop's resolution, and a prior trained on small crops
    would read the fit's 256² crops as a different input.) Hands with
    more observed texels keep a random subset (``generator``; the largest
    weights when None).
    -> dict uv (B,N,2), rgb (B,N,3), conf (B,N), cos (B,N), mask (B,N) bool
    """
    dev, dt = samples.uv.device, samples.uv.dtype
    T = texels
    ij = (samples.uv * T).long().clamp(0, T - 1)
    cell = (samples.batch * T + ij[:, 1]) * T + ij[:, 0]
    w = samples.weight.clamp(min=0)
    acc = torch.zeros(batch_size * T * T, 8, device=dev, dtype=dt)
    vals = torch.cat([samples.uv * w[:, None], samples.rgb * w[:, None], (samples.cos * w)[:, None],
                      w[:, None], torch.ones_like(w)[:, None]], 1)
    acc.index_add_(0, cell, vals)
    acc = acc.view(batch_size, T * T, 8)
    W = acc[..., 6]
    seen = W > 1e-6
    N = max(1, min(max_tokens, int(seen.sum(1).max()) if seen.numel() else 1))
    score = W.clone() if generator is None else torch.rand(W.shape, generator=generator).to(dev, dt)
    score = torch.where(seen, score + 1.0, torch.full_like(score, -1.0))
    idx = score.topk(N, dim=1).indices                                    # (B,N)
    pick = torch.gather(acc, 1, idx[..., None].expand(-1, -1, 8))
    mask = torch.gather(seen, 1, idx)
    Wp = pick[..., 6].clamp(min=1e-8)
    return {"uv": pick[..., 0:2] / Wp[..., None], "rgb": pick[..., 2:5] / Wp[..., None],
            "cos": pick[..., 5] / Wp, "conf": mask.to(dt), "mask": mask}


def save_prior(model: TexturePrior, path, extra: dict | None = None) -> None:
    """Write the weights and config (loadable with weights_only=True), atomically."""
    from ..cache import atomic_save

    cfg = asdict(model.config)
    cfg["channels"] = list(cfg["channels"])
    obj = {"kind": "texture_prior", "config": cfg, "model": model.state_dict(), **(extra or {})}
    atomic_save(obj, path, torch.save)


def load_prior(path=None, device="cpu", dtype=torch.float32) -> TexturePrior | None:
    """A TexturePrior from ``path`` (a prior file or a training checkpoint), or
    the shipped ``texture_prior_anny.pt`` when path is None (None, with a
    warning, if it is missing)."""
    if path is None:
        from ..weights import load_weights

        ck = load_weights("texture_prior_anny.pt", "unseen texels fall back to the coarse albedo")
        if ck is None:
            return None
    else:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ck["prior_config"] if "prior_config" in ck else ck["config"]  # a training checkpoint, or a prior file
    net = TexturePrior(PriorConfig(**cfg))
    net.load_state_dict({k: v.float() for k, v in ck["model"].items()})
    return net.to(device=device, dtype=dtype).eval()
