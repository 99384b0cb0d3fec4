"""The output folder of a batch: atomic result folders, the summary, resume.

* Every result folder ``OUT/<key>/`` is written into a temporary sibling
  (``.handfit-tmp-<name>.<tag>``) and renamed into place, so a folder without
  the temporary prefix is always complete. Its ``status.json`` holds the
  input's summary line; a folder with one is finished and skipped on a rerun.
* ``summary.jsonl`` is appended line by line while the batch runs (a kill can
  leave it with repeated or torn lines) and rewritten at the end, atomically,
  with exactly one line per input in input order.
* Temporary folders left by a killed run are removed when the next run of the
  same shard starts.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

from ..io import jsonfile

TMP_PREFIX = ".handfit-tmp-"
STATUS = "status.json"


def summary_name(k: int = 1, n: int = 1) -> str:
    """summary.jsonl for a whole job; summary-K-of-N.jsonl for one shard of it."""
    return "summary.jsonl" if n == 1 else f"summary-{k}-of-{n}.jsonl"


def manifest_name(k: int, n: int) -> str:
    """shard-K-of-N.json: the units a shard holds, and whether it finished (read by merge)."""
    return f"shard-{k}-of-{n}.json"


def write_manifest(out: Path, k: int, n: int, units, complete: bool):
    """Record shard K/N's units ([kind, path, key]) and whether it ran to its end, atomically."""
    import tempfile

    path = Path(out) / manifest_name(k, n)
    doc = {"shard": [k, n], "complete": complete, "count": len(units),
           "units": [[u.kind, u.path, u.key] for u in units]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(jsonfile.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def shard_tag(k: int = 1, n: int = 1) -> str:
    return f"s{k}of{n}"


def _json_default(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def dumps(record: dict) -> str:
    return jsonfile.dumps(record, default=_json_default, separators=(",", ":"))


def read_status(folder: Path) -> dict | None:
    """The finished record of a result folder, or None when it is not finished."""
    try:
        rec = json.loads((folder / STATUS).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("status") in ("ok", "no_hand") else None


def commit(out: Path, key: str, write, tag: str) -> Path:
    """Write a result folder atomically: ``write(tmp_folder)`` fills a temporary
    sibling of ``OUT/key``, which is then renamed into place (an existing folder
    is replaced: moved aside, replaced, deleted). -> the final folder.

    Raises FileExistsError (an OSError: the input becomes an ``error`` line)
    when ``OUT/key`` holds another input's finished result folder."""
    final = Path(out) / key
    held = _results_inside(final)
    if held is not None:
        # Replacing OUT/x would delete the finished result OUT/x/y of another input.
        raise FileExistsError(f"{final} holds another input's result ({held}); not replacing it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}.{tag}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    _fsync_tree(tmp)
    if final.exists():
        old = final.parent / f"{TMP_PREFIX}old-{final.name}.{tag}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


def _results_inside(folder: Path) -> Path | None:
    """A finished result folder (with status.json) strictly below ``folder``, or None."""
    if not folder.is_dir():
        return None
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX)]
        if root != str(folder) and STATUS in files:
            return Path(root)
    return None


def _fsync_tree(folder: Path):
    """Flush the files' data before the rename publishes them (a crash of the
    machine, not only of the process, then cannot leave a renamed empty file)."""
    if os.environ.get("HANDFIT_NO_FSYNC") == "1":
        return
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def clean_temps(out: Path, tag: str | None) -> int:
    """Remove temporary folders under OUT left by a killed run (of shard ``tag``; all when None).

    Finished result folders (with status.json) are not descended into, so this
    costs one directory listing per folder level, not one per result file.
    -> how many were removed
    """
    out = Path(out)
    if not out.is_dir():
        return 0
    removed = 0
    stack = [out]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if not e.is_dir(follow_symlinks=False):
                continue
            if e.name.startswith(TMP_PREFIX):
                if tag is None or e.name.endswith("." + tag):
                    shutil.rmtree(e.path, ignore_errors=True)
                    removed += 1
                continue
            if not os.path.exists(os.path.join(e.path, STATUS)):
                stack.append(Path(e.path))
    return removed


class SummaryLog:
    """Append-only JSON-lines log, safe to call from several threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict):
        line = dumps(record) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def close(self):
        with self._lock:
            self._f.close()


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; torn or malformed lines (a kill mid-write) are skipped."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "key" in rec:
            out.append(rec)
    return out


def write_jsonl_atomic(path: Path, records: list[dict]):
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def compact(out: Path, units, log_path: Path, done: dict | None = None) -> list[dict]:
    """One record per unit, in order: its folder's status.json when finished,
    else the last record the log holds for it (an ``error``). The summary file
    is rewritten atomically. -> the records"""
    out = Path(out)
    last = {r["key"]: r for r in read_jsonl(log_path)}
    records = []
    for u in units:
        rec = (done or {}).get(u.key) or read_status(out / u.key)
        if rec is None:
            rec = last.get(u.key)
            if rec is None or rec.get("status") in ("ok", "no_hand"):
                # Logged as finished but its folder is gone (deleted by hand): not done.
                rec = {"path": u.path, "key": u.key, "kind": u.kind, "status": "error", "hands": 0,
                       "seconds": 0.0, "message": "not processed (the run was interrupted)"}
        records.append(rec)
    write_jsonl_atomic(log_path, records)
    return records
