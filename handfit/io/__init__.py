"""Input and output: image loading (:mod:`handfit.io.image`), exporters, overlays."""

from .image import Photo, load_image

__all__ = ["Photo", "load_image"]
