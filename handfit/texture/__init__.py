"""Texture from photos: unwrap visible pixels into sparse UV-RGB samples,
splat them into a UV map with a confidence map, and fill the unseen texels
from a prior."""

from .unwrap import UVSamples, fill_push_pull, splat, unwrap  # noqa: F401
