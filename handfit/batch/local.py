"""The local engine of a batch: a three-stage pipeline in one process.

A worker thread loads and detects the next chunk of photos while the main
thread fits the current one (the hands of up to ``batch_size`` photos in one
optimisation per side), and a writer thread saves finished results behind
it. Videos are fitted one at a time (:mod:`handfit.batch.video`).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

from . import store
from .inputs import Unit
from .records import BatchJob, error_record
from .stages import Prepared, Preparer, fit_chunk, save_photo


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, unit="input")


def run_local(todo: list[Unit], job: BatchJob, log: store.SummaryLog, run_id: str, fit=None) -> int:
    """Compute ``todo`` in this process; every finished unit is committed and logged. -> units computed"""
    opts = job.fit_options()
    photos = [u for u in todo if u.kind == "photo"]
    videos = [u for u in todo if u.kind == "video"]
    chunks = [photos[i:i + job.batch_size] for i in range(0, len(photos), job.batch_size)]
    from ..fitting.resources import Resources  # imports torch: not before a command has sized the thread pools

    res = Resources()  # built once for this run, shared by the detect, fit and video stages
    prep = Preparer(opts.max_hands, opts.detect, job.boxes, res)
    bar = _bar(len(todo), job.progress, "inputs")
    computed = 0

    def prepare(chunk):
        return [prep(u) for u in chunk]

    def write(p: Prepared, result, err, seconds):
        if err is not None:
            log.append(error_record(p.unit, err, p.seconds + seconds))
            return
        log.append(save_photo(job, p, result, p.seconds + seconds, run_id))

    # Detection of chunk i+1 runs while chunk i is fitted; writing runs behind in its own thread.
    with ThreadPoolExecutor(1, thread_name_prefix="handfit-detect") as detect_pool, \
            ThreadPoolExecutor(1, thread_name_prefix="handfit-write") as write_pool:
        ahead = [detect_pool.submit(prepare, c) for c in chunks[:2]]
        writes = []
        for i in range(len(chunks)):
            items = ahead.pop(0).result()
            if i + 2 < len(chunks):
                ahead.append(detect_pool.submit(prepare, chunks[i + 2]))
            for p in items:
                if p.error is not None:
                    log.append(error_record(p.unit, p.error, p.seconds))
            good = [p for p in items if p.error is None]
            for p, r, err, sec in fit_chunk(good, opts, fit, res):
                writes.append(write_pool.submit(write, p, r, err, sec))
            # Surface write failures early instead of at the end.
            for w in [w for w in writes if w.done()]:
                w.result()
                writes.remove(w)
            computed += len(items)
            bar.update(len(items))
        for w in writes:
            w.result()
    for u in videos:
        from .video import process_video  # imports torch: not before a command has sized the thread pools

        log.append(process_video(u, job, run_id, res))
        computed += 1
        bar.update(1)
    bar.close()
    res.close()
    return computed
