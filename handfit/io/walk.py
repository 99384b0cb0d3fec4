"""Folder walks that follow symbolic links: datasets and batch inputs are often laid out
with links (a folder of linked runs, a linked camera folder), and ``Path.rglob`` does not
descend into linked folders before Python 3.13.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

__all__ = ["walk", "files_under"]


def walk(root) -> Iterator[tuple[str, list, list]]:
    """``os.walk(root, followlinks=True)``, top-down, names sorted, each real folder once.

    A folder reached again (through a link to a folder above it, or a second link to
    the same folder) is skipped with everything below it, so link loops end: folders
    are told apart by ``(st_dev, st_ino)``. The caller may prune ``dirs`` in place, as
    with ``os.walk``. Links to files are listed in ``files``, as are broken links.
    -> (folder path, [folder names], [file names]) per folder
    """
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        files.sort()
        yield folder, dirs, files


def files_under(root, suffix: str = "") -> list[Path]:
    """Every file under folder ``root`` whose name ends with ``suffix``, links followed
    (:func:`walk`), as paths through ``root``, sorted like ``sorted(root.rglob("*" + suffix))``."""
    return sorted(Path(folder) / name for folder, _, files in walk(root) for name in files if name.endswith(suffix))
