"""Initial textures from a photo: the dense stage's starting albedo and its fills.

The photo is unwrapped onto the mesh (handfit/texture/unwrap.py), optionally
divided by the shading of a fitted light, and splatted into the UV map;
texels the photo does not show are filled by push-pull towards the mean
colour, or taken from a prior texture (the learned prior's prediction,
:func:`prior_texture`, or the coarse albedo). :class:`PriorAppearance` is the
geometry phase's albedo when the learned prior supplies it.

Everything here works on a *scene*: anything with the photo crops
``target`` (B,S,S,3) in [0,1], their usable pixels ``valid`` (B,S,S) bool and
``rasterize(vertices, points=False)`` giving the mesh's
:class:`~handfit.render.MeshBuffers` in those crops
(handfit.fitting.scene.CropScene is the one the dense stage uses; this
package does not import handfit.fitting).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..render.mesh import MeshBuffers
from ..render.shading import sh_shading
from .fill import prior_fill
from .unwrap import fill_push_pull, splat, unwrap


class Scene(Protocol):
    """What the functions here need of a scene (e.g. handfit.fitting.scene.CropScene)."""

    target: torch.Tensor    # (B,S,S,3) photo crops in [0,1]
    valid: torch.Tensor     # (B,S,S) bool, the pixels that may give samples

    def rasterize(self, vertices: torch.Tensor, points: bool = False) -> MeshBuffers:
        """vertices (B,V,3) camera frame -> the mesh's buffers in the crops (with uv)."""


def initial_texture(scene: Scene, vertices, size: int, skin_p=None, sh=None, prior=None, g=None):
    """Unwrap the photo onto the mesh: its colours divided by the shading of
    light ``sh`` (B,9,3) (ambient if None) are the albedo samples. Unseen
    texels are filled towards ``prior`` (B,T',T',3) if given, else the mean.
    ``g``: the mesh's buffers from ``scene.rasterize(vertices, points=True)``, if already made.
    -> (texture (B,T,T,3), confidence (B,T,T,1), mean albedo (B,3))"""
    with torch.no_grad():
        B = vertices.shape[0]
        g = scene.rasterize(vertices, points=True) if g is None else g
        photo = scene.target
        if sh is not None:
            photo = photo / sh_shading(g.normals, sh).clamp(min=0.2)
        samples = unwrap(photo.clamp(0, 1), g.rast, g.uv, g.normals, g.points, valid=scene.valid,
                         colour_weight=skin_p)
        tex, conf = splat(samples, B, size)
        # Weighted mean of the samples, read off the splat (its bilinear weights sum to one per sample).
        total = conf.sum((1, 2))  # (B,1)
        mean = (tex * conf).sum((1, 2)) / total.clamp(min=1e-6)
        mean = torch.where(total > 0, mean, vertices.new_tensor([0.8, 0.62, 0.52]))
        filled = fill_push_pull(tex, conf, prior=mean, saturate=1.0)
        if prior is not None:  # holes take the prior instead of the push-pull fill
            up = resize_texture(prior, size)
            c = conf.clamp(max=1.0)
            filled = c * filled + (1 - c) * up
    return filled, conf, mean


def coarse(tex: torch.Tensor, detail: int) -> torch.Tensor:
    """(B,T,T,C) -> (B,d,d,C), its area average on a ``detail``-texel grid."""
    if detail >= tex.shape[1]:
        return tex
    return F.adaptive_avg_pool2d(tex.permute(0, 3, 1, 2), detail).permute(0, 2, 3, 1).contiguous()


def resize_texture(tex: torch.Tensor, size: int) -> torch.Tensor:
    """(B,t,t,C) -> (B,size,size,C), bilinear (the sampling handfit.render.texture does)."""
    if tex.shape[1] == size:
        return tex
    x = F.interpolate(tex.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous()


def prior_texture(net, scene: Scene, g: MeshBuffers, sh, skin_p, size: int) -> torch.Tensor:
    """The learned prior's texture (B,size,size,3) from the photo divided by
    the shading of light ``sh`` (B,9,3) and unwrapped onto the mesh buffers ``g``
    (made with ``points=True``); skin_p (B,S,S) weights the samples."""
    deshaded = scene.target / sh_shading(g.normals, sh).clamp(min=0.2)
    return prior_fill(net, deshaded, g, scene.valid, skin_p, size)


class PriorAppearance:
    """The geometry phase's albedo from the learned texture prior.

    Every ``every`` calls, the photo (divided by the current shading) is
    unwrapped onto the current mesh and the prior predicts the texture from
    those samples; it is area-averaged to ``detail`` texels a side and held
    fixed (no gradient) until the next prediction. Limiting the detail keeps
    the albedo from re-painting the photo onto a misplaced mesh.
    """

    def __init__(self, net, scene: Scene, skin_p, detail: int, every: int, size: int = 64):
        """net: a TexturePrior; skin_p (B,S,S) the photo's hand mask (sample weights)."""
        self.net, self.scene, self.skin_p = net, scene, skin_p
        self.detail, self.every, self.size = detail, every, size
        self.calls, self.texture = 0, None

    @torch.no_grad()
    def predict(self, vertices, sh) -> torch.Tensor:
        """vertices (B,V,3), sh (B,9,3) -> albedo (B,d,d,3) in [0,1]."""
        g = self.scene.rasterize(vertices, points=True)
        return coarse(prior_texture(self.net, self.scene, g, sh, self.skin_p, self.size), self.detail)

    def __call__(self, vertices, sh) -> torch.Tensor:
        """The current albedo (B,d,d,3), re-predicted every ``every`` calls."""
        if self.texture is None or self.calls % self.every == 0:
            self.texture = self.predict(vertices.detach(), sh.detach())
        self.calls += 1
        return self.texture
