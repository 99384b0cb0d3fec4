"""One UV texture for a whole video track, accumulated over its frames.

Each frame that sees the hand adds what it sees (:func:`frame_observation`):
its visible pixels unwrapped into the UV atlas and splatted, each weighted by
how squarely the surface faces the camera and how sure the photo's hand mask
is that the pixel is hand (so sleeves, objects and background stay out).
:func:`accumulate` merges any number of frames' observations into one
weighted mean; merging is associative (a mean of means with summed weights),
so a video can be accumulated one frame or one chunk at a time without
holding its frames. :func:`fill_track` finally fills the texels no frame has
shown: the learned texture prior's prediction from the observed texels, or a
push-pull fill towards their mean colour.

Shapes: F frames, ``T×T`` texels; colours in [0,1]; weights are summed
sample weights (0 = unseen), as :func:`handfit.texture.unwrap.splat` gives.
"""

from __future__ import annotations

import torch

from .fill import predict_texture
from .prior import TexturePrior
from .unwrap import UVSamples, fill_push_pull, splat, unwrap

DEFAULT_SKIN = (0.8, 0.62, 0.52)  # the mean colour when nothing was seen (as texture/init.py)


def mask_weight(hand_p: torch.Tensor) -> torch.Tensor:
    """(B,H,W) photo hand-mask probability -> (B,H,W) sample weight in [0,1]:
    ``2p - 1`` above one half, 0 elsewhere. Pixels the mask is unsure of (the
    consensus mask's 0.5 where its two masks disagree) or calls background
    give nothing: a texture shown by every frame of a track can afford to
    drop them, and they are where sleeves and backgrounds get in."""
    return (2 * hand_p - 1).clamp(min=0, max=1)


def frame_observation(photo: torch.Tensor, g, valid: torch.Tensor | None = None, hand_p: torch.Tensor | None = None,
                      size: int = 256, min_cos: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """What B frames show of the texture: colour (B,T,T,3) and weight (B,T,T,1).

    photo (B,H,W,3) in [0,1] (divided by a light's shading if one is known);
    g: the mesh's buffers in those pixels (``render.rasterize_mesh(..., points=True)``
    with uv); valid (B,H,W) bool, the pixels that may give samples; hand_p
    (B,H,W) the photo's hand-mask probability (weights by :func:`mask_weight`).
    A pixel's weight is ``(cos - min_cos) / (1 - min_cos)`` (cos: surface normal
    against the view ray; grazing views below ``min_cos`` are dropped) times its
    mask weight; silhouette pixels are dropped (:func:`~handfit.texture.unwrap.unwrap`).
    Unseen texels have colour 0 and weight 0."""
    samples = unwrap(photo.clamp(0, 1), g.rast, g.uv, g.normals, g.points, valid=valid, min_cos=min_cos,
                     colour_weight=None if hand_p is None else mask_weight(hand_p))
    return splat(samples, photo.shape[0], size)


def accumulate(colour: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F observations (colour (F,T,T,3), weight (F,T,T,1)) -> their weighted mean
    colour (T,T,3) (0 where no frame saw the texel) and summed weight (T,T,1).

    Feeding back an earlier result as one more observation gives the same as
    accumulating everything at once, so a track is built frame by frame as
    ``acc = accumulate(torch.cat([acc_c[None], c]), torch.cat([acc_w[None], w]))``."""
    w = weight.clamp(min=0)
    total = w.sum(0)
    mean = (colour * w).sum(0) / total.clamp(min=1e-8)
    return mean * (total > 0), total


def merge(acc: tuple | None, colour: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A running accumulation ``acc`` ((T,T,3), (T,T,1), or None at the start) with F
    more observations (F,T,T,3), (F,T,T,1) added. -> (colour (T,T,3), weight (T,T,1))"""
    if acc is not None:
        colour, weight = torch.cat([acc[0][None], colour]), torch.cat([acc[1][None], weight])
    return accumulate(colour, weight)


def texel_samples(colour: torch.Tensor, weight: torch.Tensor) -> UVSamples:
    """The observed texels of one texture (T,T,3), (T,T,1) as UV samples at the
    texel centres (uv = (i + 0.5) / T), for the texture prior. Their view cosine
    is taken as 1: each texel is a mean over views weighted towards square ones."""
    T = colour.shape[0]
    iy, ix = (weight[..., 0] > 0).nonzero(as_tuple=True)
    uv = torch.stack([(ix.to(colour.dtype) + 0.5) / T, (iy.to(colour.dtype) + 0.5) / T], -1)
    w = weight[iy, ix, 0]
    return UVSamples(batch=torch.zeros_like(ix), uv=uv, rgb=colour[iy, ix], cos=torch.ones_like(w), weight=w)


def fill_track(colour: torch.Tensor, weight: torch.Tensor, prior: TexturePrior | None = None,
               saturate: float = 1.0) -> torch.Tensor:
    """The track's texture (T,T,3) in [0,1] from its accumulation (T,T,3), (T,T,1).

    Texels seen with weight >= ``saturate`` keep their colour; unseen ones take
    the learned ``prior``'s prediction from the observed texels, or without
    one a push-pull fill towards the observed mean colour; texels in between
    are blended by their weight (as :func:`handfit.texture.init.initial_texture` does)."""
    T = colour.shape[0]
    total = weight.sum()
    mean = (colour * weight).sum((0, 1)) / total.clamp(min=1e-8)
    mean = torch.where(total > 0, mean, colour.new_tensor(DEFAULT_SKIN))
    filled = fill_push_pull(colour[None], weight[None], prior=mean[None], saturate=saturate)[0]
    if prior is None or total <= 0:
        return filled
    predicted = predict_texture(prior, texel_samples(colour, weight), 1, T)[0]
    c = (weight / saturate).clamp(max=1.0)
    return (c * filled + (1 - c) * predicted).clamp(0, 1)
