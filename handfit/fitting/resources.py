"""Everything a fit reads but never changes, built once and passed in.

A :class:`Resources` holds the MediaPipe detectors, the hand models, the
keypoint regressors, the texture priors and the GPU rasterizer contexts. Each is built the first time it
is asked for (under a lock, so threads sharing one object build it once) and
then shared: a process (or a Ray worker) makes one ``Resources`` and hands it
to every fit. Nothing else in handfit keeps a cache; ``handfit.fit()`` makes
a default one for the simple case (:func:`handfit.api.default_resources`).

    res = Resources()
    results = handfit.fit_batch(paths, resources=res)
    res.close()                     # or: with Resources() as res: ...
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

__all__ = ["Resources"]


class Resources:
    """Detectors, hand models, regressors and texture priors, built on first use.

    Thread-safe: any number of threads may share one object. Models are
    returned in eval mode with frozen parameters; treat everything returned
    as read-only.
    """

    def __init__(self, detector_class=None):
        """detector_class: what :meth:`detector` builds, called as
        ``detector_class(max_hands=..., mode=...)`` (default :class:`handfit.detect.Detector`);
        e.g. a subclass that remembers its answers, for benchmarks that fit the same photos
        under several settings."""
        self._lock = threading.RLock()
        self._items: dict = {}
        self._detector_class = detector_class

    def _get(self, key, build):
        with self._lock:
            if key not in self._items:
                self._items[key] = build()
            return self._items[key]

    def detector(self, mode: str = "thorough", max_hands: int | None = None):
        """The MediaPipe detector (:class:`handfit.detect.Detector`) for a detection mode."""
        from ..detect import Detector

        make = self._detector_class or Detector
        return self._get(("detector", mode, max_hands), lambda: make(max_hands=max_hands, mode=mode))

    def model(self, name: str = "anny", side: str = "right", mano_path=None, device=None,
              dtype: torch.dtype = torch.float32):
        """A hand model (:func:`handfit.models.load_model`) on ``device`` in ``dtype``."""
        from ..models import load_model

        device = torch.device(device) if device is not None else torch.device("cpu")
        path = str(Path(mano_path).expanduser().resolve()) if mano_path is not None and name != "anny" else None
        return self._get(("model", str(name).lower(), str(side).lower(), path, str(device), dtype),
                         lambda: load_model(name, side=side, mano_path=mano_path, device=device, dtype=dtype))

    def regressor(self, model, device=None, dtype: torch.dtype = torch.float32):
        """The shipped keypoint regressor for ``model``, or None when none matches it."""
        from .init import load_regressor

        device = torch.device(device) if device is not None else torch.device("cpu")
        key = ("regressor", model.name, model.pose_dim, model.shape_dim, str(device), dtype)
        return self._get(key, lambda: load_regressor(model, device, dtype))

    def texture_prior(self, spec: str, model_name: str, device=None, dtype: torch.dtype = torch.float32):
        """The learned texture prior ``spec`` names (FitOptions.texture_prior), or None.
        The shipped one is trained on Anny's UV atlas: MANO gets one only by path."""
        if spec is None or spec == "none" or (spec == "default" and model_name != "anny"):
            return None
        from ..texture.fill import resolve_prior

        device = torch.device(device) if device is not None else torch.device("cpu")
        return self._get(("prior", str(spec), str(device), dtype), lambda: resolve_prior(spec, device, dtype))

    def render_context(self, device, backend: str = "auto"):
        """The rasterizer state for ``device`` (:func:`handfit.render.make_context`):
        nvdiffrast's CUDA context on a GPU, None on the CPU."""
        from ..render import make_context

        device = torch.device(device)
        return self._get(("render", str(device), backend), lambda: make_context(device, backend))

    def close(self) -> None:
        """Close the detectors and forget everything built so far."""
        with self._lock:
            items, self._items = self._items, {}
        for key, value in items.items():
            if key[0] == "detector" and hasattr(value, "close"):
                value.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
