"""Where handfit keeps files it derives once and reuses (model caches, UV atlases)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder: ``$HANDFIT_CACHE`` if set, else ``~/.cache/handfit``.

    Created on demand.
    """
    env = os.environ.get("HANDFIT_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "handfit"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_save(obj, path: Path, save) -> None:
    """Write ``obj`` to ``path`` through ``save(obj, tmp_path)`` and an atomic rename.

    Several processes (pytest workers, parallel CLI runs) may build the same
    cache entry at once; each writes its own temporary file and the last rename
    wins, so readers never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; cache files are shareable
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
