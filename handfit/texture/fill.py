"""Filling the texels a photo does not see with the learned texture prior.

The dense stage calls :func:`prior_fill` once, in its texture phase: the
photo is unwrapped onto the final mesh (as for the initial texture) and the
prior predicts the whole UV texture from those samples. Observed texels keep
their own colour; the prediction replaces the coarse albedo as the fill of
the unseen ones and as the target of the texture-prior term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .prior import TexturePrior, pack_samples
from .unwrap import UVSamples, unwrap


@torch.no_grad()
def predict_texture(net: TexturePrior, samples: UVSamples, batch_size: int, size: int,
                    max_tokens: int = 384) -> torch.Tensor:
    """The prior's texture (B,size,size,3) from UV samples of B hands; device
    and dtype follow the samples (the net is moved to them)."""
    dev, dt = samples.uv.device, samples.uv.dtype
    net = net.to(device=dev, dtype=dt)
    p = pack_samples(samples, batch_size, max_tokens=max_tokens)
    tex = net(p["uv"], p["rgb"], p["conf"], p["cos"], p["mask"])
    if tex.shape[1] != size:
        tex = F.interpolate(tex.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                            align_corners=False).permute(0, 2, 3, 1)
    return tex.contiguous()


def prior_fill(net: TexturePrior, photo: torch.Tensor, g, valid: torch.Tensor | None = None,
               weight: torch.Tensor | None = None, size: int = 256) -> torch.Tensor:
    """The learned prior's texture (B,size,size,3) from a photo unwrapped onto a mesh.

    photo (B,S,S,3) in [0,1] (already divided by the fitted shading, as the
    texture phase's samples are); g: the mesh's buffers (rast, uv, normals,
    points of ``render.rasterize_mesh(..., points=True)``); valid (B,S,S) bool
    and weight (B,S,S) as for :func:`unwrap`.
    """
    samples = unwrap(photo.clamp(0, 1), g.rast, g.uv, g.normals, g.points, valid=valid, colour_weight=weight)
    return predict_texture(net, samples, photo.shape[0], size)


def resolve_prior(spec, device, dtype) -> TexturePrior | None:
    """FitOptions.texture_prior -> a loaded prior or None.

    spec: "default" (the shipped weights; None with a warning if missing),
    "none", or a path to a prior file or training checkpoint."""
    from .prior import load_prior

    if spec is None or str(spec).lower() == "none":
        return None
    return load_prior(None if spec == "default" else spec, device=device, dtype=dtype)
