"""The batch job: inputs -> result folders, summary.jsonl, index.html.

:func:`run_batch` is the library face of ``handfit batch``: it lists and
shards the inputs, skips those already finished, runs the rest on an engine
(:mod:`.local`: threads in this process; :mod:`.ray_engine`: the same stages
(:mod:`.stages`) as a Ray Data pipeline, with the same outputs), then compacts
the summary and writes the gallery. The records and exit codes are
:mod:`.records`'.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from ..errors import UsageError
from . import store
from .inputs import collect, parse_shard, shard
from .local import run_local
from .records import BatchJob, BatchReport, VideoOptions
from .stages import plan


def run_batch(sources, out, options=None, *, batch_size: int = 16, overwrite: bool = False,
              shard_spec: str | None = None, glob: str | None = None, video: VideoOptions | None = None,
              engine: str = "local", progress: bool = False, gallery: bool = True, fit=None,
              boxes: dict | None = None) -> BatchReport:
    """Fit every photo and video in ``sources`` (folders walked recursively,
    photos, videos, text files listing paths) into ``out``.

    Finished inputs (a result folder with status.json) are skipped unless
    ``overwrite``; ``shard_spec="K/N"`` takes the K-th of N disjoint parts.
    ``engine``: "local" (threads in this process) or "ray" (a Ray Data
    pipeline; RAY_ADDRESS joins a cluster). ``boxes``: your own hand boxes per
    photo (:func:`load_boxes`), searched instead of the whole photo (videos are
    searched whole; a warning says so). ``gallery``: write OUT/index.html
    (not for one shard of a job: ``handfit merge`` writes it). ``fit``:
    replaces :func:`handfit.api.fit_batch` (tests). Raises UsageError for bad options.
    """
    k, n = parse_shard(shard_spec)
    job = BatchJob(out=Path(out), options=options, batch_size=batch_size, overwrite=overwrite, shard=(k, n),
                   video=video or VideoOptions(), progress=progress, gallery=gallery, boxes=boxes)
    units_all = collect(sources, glob)
    units = shard(units_all, k, n)
    if boxes and any(u.kind == "video" for u in units):
        import warnings

        warnings.warn("--boxes applies to photos only: videos are searched whole", stacklevel=2)
    job.out.mkdir(parents=True, exist_ok=True)
    # Temporary folders of a killed run of this shard (or of any, for an unsharded job).
    store.clean_temps(job.out, job.tag if n > 1 else None)
    todo, done = plan(units, job)
    run_id = uuid.uuid4().hex[:12]
    if n > 1:  # merge tells a shard that was killed (or is still running) from a finished one
        store.write_manifest(job.out, k, n, units, complete=False)
    log = store.SummaryLog(job.summary_path)
    try:
        if engine == "local":
            computed = run_local(todo, job, log, run_id, fit=fit)
        elif engine == "ray":
            from .ray_engine import run_ray

            computed = run_ray(todo, job, log, run_id)
        else:
            raise UsageError(f"--engine must be local or ray, not {engine!r}")
    finally:
        log.close()
    records = store.compact(job.out, units, job.summary_path, done)
    if n > 1:
        store.write_manifest(job.out, k, n, units, complete=True)
    if gallery and n == 1:  # a sharded job's gallery is written by `handfit merge`, once every shard is done
        from .gallery import write_gallery

        write_gallery(job.out, records)
    return BatchReport(records=records, summary=job.summary_path, computed=computed)


def summary_line(report: BatchReport, out) -> str:
    r = report
    return (f"{len(r.records)} input(s): {r.count('ok')} ok, {r.count('no_hand')} without a hand, "
            f"{r.count('error')} error(s); {r.hands} hand(s), {r.suspect} suspect; {r.computed} computed now "
            f"-> {out} (summary: {r.summary.name})")


def environ_progress() -> bool:
    return sys.stderr.isatty() or os.environ.get("HANDFIT_PROGRESS") == "1"
