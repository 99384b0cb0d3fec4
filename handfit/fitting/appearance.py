"""The dense stage's appearance models: what colours the mesh while its geometry moves.

Chosen once per fit by :func:`choose_appearance`, each answers the same small interface:
``model(vertices, p) -> albedo`` (p: the optimised tensors), ``learns`` (whether the
state's ``texture`` is optimised with the geometry), ``on(scene, skin_p)`` (the model for
the crops at hand: the geometry phase runs on downsampled crops, then at full size) and
``albedo(state)`` (the phase's final albedo, where the texture phase starts).
"""

from __future__ import annotations

import torch

from ..options import DenseStage
from ..texture.init import PriorAppearance

__all__ = ["CoarseAlbedo", "PriorAlbedo", "GivenTexture", "choose_appearance"]



class CoarseAlbedo:
    """A free albedo of ``texture_detail`` texels a side (``p["texture"]``), optimised with
    the geometry. Sharper, unwrapped from a misaligned mesh, it would bake the misalignment in."""

    learns = True

    def __call__(self, vertices, p) -> torch.Tensor:
        return p["texture"].clamp(0, 1)

    def on(self, scene, skin_p) -> "CoarseAlbedo":
        return self

    def albedo(self, state: dict) -> torch.Tensor:
        """The phase's final albedo (B,d,d,3) in [0,1]."""
        return state["texture"].detach().clamp(0, 1)


class PriorAlbedo:
    """The learned texture prior's prediction from what the current mesh sees
    (:class:`handfit.texture.init.PriorAppearance`), re-predicted on a schedule."""

    learns = False

    def __init__(self, net, stage: DenseStage, scene=None, skin_p=None):
        self.net, self.stage = net, stage
        self.prior = None if scene is None else PriorAppearance(net, scene, skin_p, stage.prior_detail,
                                                                stage.prior_every)

    def __call__(self, vertices, p) -> torch.Tensor:
        return self.prior(vertices, p["sh"])

    def on(self, scene, skin_p) -> "PriorAlbedo":
        """A new one, its schedule restarted, on the crops ``scene`` with hand mask ``skin_p``."""
        return PriorAlbedo(self.net, self.stage, scene, skin_p)

    def albedo(self, state: dict) -> torch.Tensor:
        return self.prior.texture


class GivenTexture:
    """A given texture (B,T,T,3) in [0,1], fixed (a video track's): only geometry and light move."""

    learns = False

    def __init__(self, texture: torch.Tensor):
        self.texture = texture

    def __call__(self, vertices, p) -> torch.Tensor:
        return self.texture

    def on(self, scene, skin_p) -> "GivenTexture":
        return self

    def albedo(self, state: dict) -> torch.Tensor:
        return self.texture


def choose_appearance(stage: DenseStage, texture=None, texture_prior=None, device=None, dtype=None):
    """The geometry phase's appearance model, chosen once: the given ``texture`` (B,T,T,3),
    else the prior's albedo (``geometry_albedo`` "prior" with a ``texture_prior``), else the
    coarse albedo. Each model answers ``on(scene, skin_p)`` (the one the crops at hand use),
    ``learns`` (whether the state's ``texture`` is optimised) and ``albedo(state)``."""
    if texture is not None:
        return GivenTexture(texture.to(device=device, dtype=dtype).clamp(0, 1))
    if stage.geometry_albedo == "prior" and texture_prior is not None:
        return PriorAlbedo(texture_prior, stage)
    return CoarseAlbedo()
