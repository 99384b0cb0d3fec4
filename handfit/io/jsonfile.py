"""Strict JSON: every JSON and JSONL file handfit writes goes through :func:`dumps`.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which are not JSON:
JavaScript's ``JSON.parse`` and most other parsers reject the whole document. A
value that is not a finite number (a jitter of a track too short to have one, a
metric of a hand that was not detected) is written as ``null`` instead.
"""

from __future__ import annotations

import json
import math

import numpy as np

__all__ = ["strict", "dumps"]


def strict(obj):
    """``obj`` with every non-finite float (Python or numpy, nested in dicts, lists,
    tuples or arrays) replaced by None, numpy floats and arrays made Python floats
    and lists. Finite values are kept as they are (so they print the same digits)."""
    if isinstance(obj, float):  # np.float64 too
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.floating):
        return strict(obj.item())
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    return obj


def dumps(obj, default=None, **kwargs) -> str:
    """``json.dumps`` of :func:`strict` ``(obj)`` with ``allow_nan=False``: ``null`` for NaN and
    infinities, never an invalid token. ``default`` (as ``json.dumps``'s) converts other
    objects; what it returns is made strict too."""
    if default is not None:
        kwargs["default"] = lambda o: strict(default(o))
    return json.dumps(strict(obj), allow_nan=False, **kwargs)
