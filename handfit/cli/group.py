"""The ``handfit`` click group. Its commands are added in :mod:`handfit.cli` (``__init__``)."""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="handfit")
def main():
    """handfit: textured 3D hands from single RGB photos.

    Each hand is detected with MediaPipe, initialised from a keypoint
    regressor, then fitted by test-time optimisation: keypoints first, then a
    dense stage that renders the textured mesh and compares it with the
    photo pixel by pixel. Outputs are OBJ/GLB meshes lying on the
    photo, UV textures taken from it, parameters and an overlay.

    \b
    Exit codes:
      0  at least one hand fitted
      1  any other error
      2  usage error (bad option, bad or refused model file)
      3  no hand found (result.json with no hands is still written)
      4  unreadable input (missing, empty, not an image, truncated)
      5  compute backend unavailable (CUDA, nvdiffrast)
    """
    # Thread pools are sized here, at the start of a command, never at import (bench/research/contention.py).
    from ..batch.threads import configure_threads_env

    configure_threads_env()
