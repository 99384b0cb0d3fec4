"""The Anny hand's rig and cache format: what the model (:mod:`handfit.models.anny`)
and its one-time build (:mod:`handfit.models.anny_build`) both need. Imports
neither of them.
"""

from __future__ import annotations

import importlib.metadata

CACHE_FORMAT = 1

# Anny's 'anny-hand.R' rig, in its own order.
BONES = (
    "root", "wrist",
    "finger1-1", "finger1-2", "finger1-3",
    "metacarpal1", "finger2-1", "finger2-2", "finger2-3",
    "metacarpal2", "finger3-1", "finger3-2", "finger3-3",
    "metacarpal3", "finger4-1", "finger4-2", "finger4-3",
    "metacarpal4", "finger5-1", "finger5-2", "finger5-3",
)
PARENTS = (-1, 0, 1, 2, 3, 1, 5, 6, 7, 1, 9, 10, 11, 1, 13, 14, 15, 1, 17, 18, 19)
DISTAL_BONES = (4, 8, 12, 16, 20)   # thumb .. pinky

# The build's parameters.
SHAPE_DIM = 10
N_SAMPLES = 2000
AGE_RANGE = (6.0, 80.0)   # morphological age (years) of the sampled phenotypes
UV_MARGIN = 0.005


def anny_version() -> str | None:
    try:
        return importlib.metadata.version("anny")
    except importlib.metadata.PackageNotFoundError:
        return None
