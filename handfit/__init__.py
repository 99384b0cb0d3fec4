"""handfit: textured 3D hands from single RGB photos.

The library face is :func:`handfit.fit` (one photo) and :func:`handfit.fit_batch`
(many photos). Both return :class:`handfit.FitResult` objects; the CLI
(``handfit fit``/``handfit batch``) is a thin layer over them.
"""

__version__ = "0.1.0"

__all__ = ["fit", "fit_batch", "export_track", "FitResult", "HandResult", "Resources", "FitOptions", "KeypointStage", "KeypointWeights",
           "DenseStage", "DenseWeights", "__version__"]

_OPTIONS = ("FitOptions", "KeypointStage", "KeypointWeights", "DenseStage", "DenseWeights")


def __getattr__(name):
    # Importing torch, mediapipe and the hand models takes seconds; keep
    # `import handfit` and `handfit --version` instant by loading lazily.
    if name in _OPTIONS:
        from . import options

        return getattr(options, name)
    if name in ("fit", "fit_batch", "export_track", "FitResult", "HandResult", "Resources"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'handfit' has no attribute {name!r}")
