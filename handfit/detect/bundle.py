"""The offline ``hand_landmarker`` ``.task`` bundle, built from mediapipe's own models.

The Tasks API wants a ``.task`` bundle; it is built once from the two models
that the mediapipe 0.10.21 wheel ships (palm detection and hand landmarks),
zipped uncompressed into the cache folder (``$HANDFIT_CACHE`` or
``~/.cache/handfit``). Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path

from ..errors import BackendError

__all__ = ["task_file"]

_PALM_MODEL = "modules/palm_detection/palm_detection_full.tflite"
_LANDMARK_MODEL = "modules/hand_landmark/hand_landmark_full.tflite"
_TASK_MEMBERS = {
    "hand_detector.tflite": _PALM_MODEL,
    "hand_landmarks_detector.tflite": _LANDMARK_MODEL,
}


def _cache_dir() -> Path:
    """``handfit.cache.cache_dir()`` (``$HANDFIT_CACHE`` or ``~/.cache/handfit``)."""
    env = os.environ.get("HANDFIT_CACHE")
    fallback = Path(env).expanduser() if env else Path.home() / ".cache" / "handfit"
    try:
        from ..cache import cache_dir
    except ImportError:
        return fallback
    try:
        return Path(cache_dir())
    except OSError:  # not creatable: task_file() falls back to a temp folder
        return fallback


def _mediapipe_root() -> tuple[Path, str]:
    try:
        import mediapipe
    except ImportError as e:  # pragma: no cover - a hard dependency
        raise BackendError(f"mediapipe is not installed: {e}") from None
    return Path(mediapipe.__file__).resolve().parent, getattr(mediapipe, "__version__", "unknown")


def _task_ok(path: Path, sizes: dict[str, int]) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
    except (OSError, zipfile.BadZipFile):
        return False
    return all(
        n in infos and infos[n].file_size == s and infos[n].compress_type == zipfile.ZIP_STORED
        for n, s in sizes.items()
    )


def task_file(cache: str | os.PathLike | None = None) -> Path:
    """Path of the offline ``hand_landmarker`` ``.task`` bundle, built if needed.

    The bundle zips (stored, uncompressed) the wheel's
    ``palm_detection_full.tflite`` as ``hand_detector.tflite`` and
    ``hand_landmark_full.tflite`` as ``hand_landmarks_detector.tflite``. It is
    written atomically (temporary file + rename) into ``cache`` (default: the
    handfit cache folder; a temporary folder when that is not writable) and
    reused while it matches the installed models.

    Raises:
        BackendError: the installed mediapipe does not ship the models
            (mediapipe >= 1.0 dropped them; handfit pins 0.10.21).
    """
    root, version = _mediapipe_root()
    sources = {name: root / rel for name, rel in _TASK_MEMBERS.items()}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise BackendError(
            f"mediapipe {version} does not ship the hand models ({', '.join(missing)}); "
            "install mediapipe==0.10.21"
        )
    sizes = {name: p.stat().st_size for name, p in sources.items()}
    fname = f"hand_landmarker-mediapipe-{version}.task"
    dirs = [Path(cache)] if cache is not None else [_cache_dir()]
    if cache is None:
        dirs.append(Path(tempfile.gettempdir()) / f"handfit-cache-{os.getuid() if hasattr(os, 'getuid') else 0}")
    last_err: Exception | None = None
    for d in dirs:
        path = d / fname
        if _task_ok(path, sizes):
            return path
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".hand_landmarker-", suffix=".tmp", dir=d)
            try:
                with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
                    for name, src in sources.items():
                        z.write(src, name)
                os.chmod(tmp, 0o644)  # mkstemp makes it 0600
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            last_err = e
            continue
        if _task_ok(path, sizes):
            return path
    raise BackendError(f"cannot write the MediaPipe .task file to {dirs[0]}: {last_err}")
