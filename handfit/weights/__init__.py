"""Weights that handfit trains and ships inside the package.

Files here are package data (``pip install .`` copies them), so an installed
wheel finds them exactly as a checkout does. Nothing is downloaded at run
time; ``make weights`` / ``handfit train`` rebuild them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).resolve().parent


def weights_path(name: str) -> Path:
    """Where the shipped file ``name`` lives (whether or not it exists)."""
    return WEIGHTS_DIR / name


def load_weights(name: str, what: str, warn: bool = True):
    """Load the shipped checkpoint ``name`` with ``weights_only=True``.

    A missing file is never silent: with ``warn`` a :class:`UserWarning`
    names the file and ``what`` is lost without it, and None is returned.
    """
    path = weights_path(name)
    if not path.is_file():
        if warn:
            warnings.warn(f"handfit: {path} is missing; {what}. Reinstall handfit or run `make weights`.",
                          stacklevel=3)
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
