"""What a batch runs on: photos and videos found in folders, files and path lists.

:func:`collect` turns command-line sources into a stable, sorted list of
:class:`Unit` objects. A unit is one photo or one whole video; its ``key`` is
the output folder relative to ``OUT`` (the input's path relative to the folder
it was found in, without extension; lengthened where two inputs would share a
folder, see :func:`collect`), so two ``img.jpg`` never collide. Which files are
photos and videos, and the video frame reader, are :mod:`handfit.io.media`'s.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import UsageError
from ..io.media import media_kind
from ..io.walk import walk

LIST_EXTS = {".txt", ".lst", ".list"}


@dataclass(frozen=True)
class Unit:
    """One input of a batch: a photo or a whole video."""

    kind: str   # "photo" | "video"
    path: str   # the file, as found
    key: str    # output folder relative to OUT, POSIX separators, no extension

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "key": self.key}


def _walk(folder: Path, pattern: str | None):
    """Files under ``folder`` in a stable order (sorted names, depth first), hidden entries skipped,
    linked folders and files followed (each real folder once, so link loops end: :func:`handfit.io.walk.walk`).

    -> [(path, posix path relative to folder)]
    """
    out = []
    for root, dirs, files in walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_root = PurePosixPath(Path(root).relative_to(folder).as_posix())
        for name in files:
            if name.startswith("."):
                continue
            rel = (rel_root / name).as_posix() if str(rel_root) != "." else name
            if pattern is not None:
                if not (fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(name, pattern)):
                    continue
                if media_kind(name) is None:
                    continue
            elif media_kind(name) is None:
                continue  # notes, JSON sidecars, ...: not inputs
            out.append((Path(root) / name, rel))
    return out


def _strip(rel: str) -> str:
    p = PurePosixPath(rel)
    return str(p.with_suffix("")) if p.suffix else str(p)


def collect(sources, glob: str | None = None) -> list[Unit]:
    """Expand ``sources`` (folders, photos, videos, text files listing paths) into units.

    Folders are walked recursively; ``glob`` (e.g. ``"*.jpg"`` or ``"cam1/*"``)
    filters the files found in folders by name or relative path. A text file
    lists one path per line (blank lines and ``#`` comments skipped), relative
    to the text file's folder unless absolute. A file found twice (same
    resolved path) is one unit. Order: as given, folders sorted.

    Keys never collide, and no key is a folder above another key (committing
    ``x`` would replace ``OUT/x/`` and the results inside it): a key that
    would is lengthened, step by step, until it does not: the extension kept
    (``img.jpg``, ``img.png``), then the name of the folder it was found in
    put in front (``day1/img``, ``day2/img`` for two folders given on the
    command line), then both. Raises UsageError when that is not enough, and
    for a source that does not exist or has an unknown type.
    """
    found: list[tuple[str, Path, str, Path]] = []  # (kind, path, relative name, the folder it is relative to)
    for src in sources:
        _expand(Path(src), glob, found, depth=0)
    entries, seen = [], set()
    for kind, path, rel, root in found:
        real = Path(path).resolve()
        if real in seen:  # the very same file listed twice
            continue
        seen.add(real)
        entries.append((kind, path, rel, root.resolve()))
    keys = _unique_keys([(rel, root) for _, _, rel, root in entries])
    return [Unit(kind, str(path), key) for (kind, path, _, _), key in zip(entries, keys)]


def _root_labels(roots) -> dict:
    """{root folder: a short, distinct name}: the folder's name, ``name-2`` ... for namesakes."""
    labels, used = {}, set()
    for root in roots:
        if root in labels:
            continue
        base = root.name or "root"
        label, i = base, 1
        while label in used:
            i += 1
            label = f"{base}-{i}"
        labels[root] = label
        used.add(label)
    return labels


def _unique_keys(items: list) -> list[str]:
    """Output keys for [(relative name, root folder)] of distinct files; see :func:`collect`."""
    labels = _root_labels([root for _, root in items])

    def form(level: int, rel: str, root: Path) -> str:
        if level == 0:
            return _strip(rel)
        if level == 1:
            return rel
        return f"{labels[root]}/{_strip(rel) if level == 2 else rel}"

    levels = [0] * len(items)
    while True:
        keys = [form(lv, rel, root) for lv, (rel, root) in zip(levels, items)]
        owners: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            owners.setdefault(k, []).append(i)
        clash = {i for ids in owners.values() if len(ids) > 1 for i in ids}
        # A key that is a folder above another key: only the upper one changes (``x`` -> ``x.jpg``).
        for k in keys:
            parts = k.split("/")
            for j in range(1, len(parts)):
                clash.update(owners.get("/".join(parts[:j]), []))
        if not clash:
            return keys
        for i in sorted(clash):
            if levels[i] == 3:
                others = [items[j][0] for j in range(len(items)) if j != i and
                          (keys[j] == keys[i] or keys[j].startswith(keys[i] + "/"))]
                raise UsageError(f"two inputs would write the same output folder {keys[i]!r} "
                                 f"({items[i][0]} and {others[0] if others else '?'}); rename one or give "
                                 "their common folder as the input")
            levels[i] += 1


def _expand(src: Path, glob, found, depth: int):
    if depth > 8:
        raise UsageError(f"{src}: path lists nested too deeply")
    if src.is_dir():
        for path, rel in _walk(src, glob):
            found.append((media_kind(path), path, rel, src))
        return
    if not src.exists():
        raise UsageError(f"{src}: no such file or folder")
    kind = media_kind(src)
    if kind is not None:
        found.append((kind, src, src.name, src.parent))
        return
    if src.suffix.lower() in LIST_EXTS:
        base = src.parent
        for line in src.read_text(errors="replace").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line)
            p = p if p.is_absolute() else base / p
            if p.is_dir():
                _expand(p, glob, found, depth + 1)
                continue
            if p.suffix.lower() in LIST_EXTS:
                _expand(p, glob, found, depth + 1)
                continue
            k = media_kind(p) or "photo"  # unknown or missing: tried as a photo, reported as an error
            # A listed file keeps its path relative to the list as its key, so that the list's
            # layout is the output's; missing or unreadable files become `error` lines later.
            try:
                rel, root = p.resolve().relative_to(base.resolve()).as_posix(), base
            except ValueError:
                rel, root = p.name, p.parent
            found.append((k, p, rel, root))
        return
    # An explicitly named file of unknown type: try it as a photo (it becomes an `error` line if it
    # is not one) rather than refusing the whole batch.
    found.append(("photo", src, src.name, src.parent))


# ---------------------------------------------------------------- shards


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) -> (K, N); None -> (1, 1)."""
    if text is None:
        return 1, 1
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 3/8") from None
    if not (n >= 1 and 1 <= k <= n):
        raise UsageError(f"--shard {text!r}: need 1 <= K <= N")
    return k, n


def shard(units: list[Unit], k: int, n: int) -> list[Unit]:
    """The K-th of N disjoint, covering parts (round robin over the stable order).

    Every shard process lists the same inputs in the same order, so each unit
    lands in exactly one shard; round robin keeps the shards' sizes within one.
    """
    return [u for i, u in enumerate(units) if i % n == k - 1]
