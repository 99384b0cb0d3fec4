"""``handfit merge OUT``: join the shards' summaries into OUT/summary.jsonl.

Shards of one job (``--shard K/N`` into the same OUT) each write
``summary-K-of-N.jsonl``. Merging reads them all, keeps one record per input
(a finished result folder wins over a logged error; otherwise the latest
line), orders them by output key, and writes ``summary.jsonl`` and the gallery.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import store

SHARD_FILE = re.compile(r"^summary-(\d+)-of-(\d+)\.jsonl$")


def shard_summaries(out: Path) -> list[Path]:
    return sorted((p for p in Path(out).glob("summary-*-of-*.jsonl") if SHARD_FILE.match(p.name)),
                  key=lambda p: tuple(int(x) for x in SHARD_FILE.match(p.name).groups()[::-1]))


def merged_records(out: Path, extra: list[Path] | None = None) -> list[dict]:
    """One record per key over every shard summary of OUT (and ``extra`` files)."""
    out = Path(out)
    by_key: dict[str, dict] = {}
    for path in shard_summaries(out) + list(extra or []):
        for rec in store.read_jsonl(path):
            old = by_key.get(rec["key"])
            if old is None or old.get("status") == "error" or rec.get("status") != "error":
                by_key[rec["key"]] = rec
    for key, rec in list(by_key.items()):
        fin = store.read_status(out / key)
        if fin is not None:
            by_key[key] = fin
    return [by_key[k] for k in sorted(by_key)]


def merge(out: Path, extra: list[Path] | None = None, gallery: bool = True) -> tuple[list[dict], list[Path]]:
    """Write OUT/summary.jsonl (and index.html) from the shard summaries. -> (records, files read)"""
    out = Path(out)
    files = shard_summaries(out) + list(extra or [])
    if not files:
        from ..errors import UsageError

        raise UsageError(f"{out}: no summary-K-of-N.jsonl files to merge")
    expected = {int(SHARD_FILE.match(p.name).group(2)) for p in files if SHARD_FILE.match(p.name)}
    records = merged_records(out, extra)
    store.write_jsonl_atomic(out / "summary.jsonl", records)
    if gallery:
        from .gallery import write_gallery

        write_gallery(out, records)
    missing = []
    for n in expected:
        have = {int(SHARD_FILE.match(p.name).group(1)) for p in files
                if SHARD_FILE.match(p.name) and int(SHARD_FILE.match(p.name).group(2)) == n}
        missing += [f"{k}/{n}" for k in range(1, n + 1) if k not in have]
    return records, missing
