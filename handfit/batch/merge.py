"""``handfit merge OUT``: join the shards' summaries into OUT/summary.jsonl.

Shards of one job (``--shard K/N`` into the same OUT) each write
``summary-K-of-N.jsonl``, and ``shard-K-of-N.json`` (its inputs, and whether
it ran to its end). Merging reads them all, keeps one record per input
(a finished result folder wins over a logged error; otherwise the latest
line), orders them by output key, and writes ``summary.jsonl`` and the gallery.
An input of a shard that did not finish and has no record is an ``error``
line ("not processed"); the shards without a summary, and those that did not
finish, are reported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import store

SHARD_FILE = re.compile(r"^summary-(\d+)-of-(\d+)\.jsonl$")


def shard_summaries(out: Path) -> list[Path]:
    return sorted((p for p in Path(out).glob("summary-*-of-*.jsonl") if SHARD_FILE.match(p.name)),
                  key=lambda p: tuple(int(x) for x in SHARD_FILE.match(p.name).groups()[::-1]))


MANIFEST_FILE = re.compile(r"^shard-(\d+)-of-(\d+)\.json$")


def manifests(out: Path) -> dict:
    """{(K, N): shard-K-of-N.json's content} of OUT (unreadable ones: {"complete": False, "units": []})."""
    found = {}
    for p in Path(out).glob("shard-*-of-*.json"):
        m = MANIFEST_FILE.match(p.name)
        if not m:
            continue
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            doc = {"complete": False, "units": []}
        found[(int(m.group(1)), int(m.group(2)))] = doc
    return found


def merged_records(out: Path, extra: list[Path] | None = None) -> list[dict]:
    """One record per key over every shard summary of OUT (and ``extra`` files)."""
    out = Path(out)
    by_key: dict[str, dict] = {}
    for path in shard_summaries(out) + list(extra or []):
        for rec in store.read_jsonl(path):
            old = by_key.get(rec["key"])
            if old is None or old.get("status") == "error" or rec.get("status") != "error":
                by_key[rec["key"]] = rec
    for (k, n), doc in sorted(manifests(out).items()):
        for kind, path, key in doc.get("units", []):
            if key not in by_key:
                by_key[key] = {"path": path, "key": key, "kind": kind, "status": "error", "hands": 0,
                               "seconds": 0.0, "message": f"not processed (shard {k}/{n} did not finish)"}
    for key, rec in list(by_key.items()):
        fin = store.read_status(out / key)
        if fin is not None:
            by_key[key] = fin
    return [by_key[k] for k in sorted(by_key)]


def merge(out: Path, extra: list[Path] | None = None, gallery: bool = True) -> tuple[list[dict], list[str]]:
    """Write OUT/summary.jsonl (and index.html) from the shard summaries.

    -> (records, problems): one line per shard that has no summary ("3/8: no
    summary") or did not run to its end ("2/8: not finished, 5 of 40 inputs
    without a result")."""
    out = Path(out)
    files = shard_summaries(out) + list(extra or [])
    if not files:
        from ..errors import UsageError

        raise UsageError(f"{out}: no summary-K-of-N.jsonl files to merge")
    docs = manifests(out)
    expected = {int(SHARD_FILE.match(p.name).group(2)) for p in files if SHARD_FILE.match(p.name)}
    expected |= {n for _, n in docs}
    records = merged_records(out, extra)
    store.write_jsonl_atomic(out / "summary.jsonl", records)
    if gallery:
        from .gallery import write_gallery

        write_gallery(out, records)
    status = {r["key"]: r["status"] for r in records}
    problems = []
    for n in sorted(expected):
        have = {int(SHARD_FILE.match(p.name).group(1)) for p in files
                if SHARD_FILE.match(p.name) and int(SHARD_FILE.match(p.name).group(2)) == n}
        for k in range(1, n + 1):
            if k not in have:
                problems.append(f"{k}/{n}: no summary")
            elif (k, n) in docs and not docs[(k, n)].get("complete"):
                units = docs[(k, n)].get("units", [])
                left = sum(status.get(u[2]) not in ("ok", "no_hand") for u in units)
                problems.append(f"{k}/{n}: not finished, {left} of {len(units)} inputs without a result")
    return records, problems
