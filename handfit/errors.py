"""Exceptions with the CLI exit code each one maps to."""


class HandfitError(Exception):
    """Base class. ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


class UsageError(HandfitError):
    """Bad options or arguments."""

    exit_code = 2


class ShapeError(UsageError, ValueError):
    """A tensor given to a library function has the wrong rank or size; the
    message quotes the shape that was given."""


class ImageError(HandfitError):
    """The input is unreadable, empty, not an image, or truncated."""

    exit_code = 4


class BackendError(HandfitError):
    """A compute backend (CUDA, nvdiffrast) is unavailable or failed to build."""

    exit_code = 5


class ModelError(HandfitError):
    """A hand-model file is missing, malformed or refused (e.g. an unsafe pickle)."""

    exit_code = 2
