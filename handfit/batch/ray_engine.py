"""``handfit batch --engine ray``: the same job as a Ray Data pipeline.

    read (the unit list) -> detect (CPU actors: load + MediaPipe)
                         -> fit + write (GPU actors when the cluster has GPUs, num_gpus = GPUs / workers
                                         up to 1; else CPU actors)

Each fit actor commits result folders exactly as the local engine does
(temporary sibling, rename, status.json), and the driver appends the records
to the summary as they arrive and compacts it at the end, so the outputs, the
summary and resume are the same. Ray starts locally unless ``RAY_ADDRESS``
names a cluster (every node then needs handfit installed and OUT on a shared
file system). Needs the optional extra: ``pip install 'handfit[ray]'``.
"""

from __future__ import annotations

import json
import os
import pickle

from ..errors import UsageError
from .inputs import Unit

DEFAULT_WORKERS = 2


def _workers() -> int:
    try:
        return max(1, int(os.environ.get("HANDFIT_RAY_WORKERS", DEFAULT_WORKERS)))
    except ValueError:
        raise UsageError("HANDFIT_RAY_WORKERS must be a whole number") from None


class _Detect:
    """Ray actor: load a photo and detect its hands; videos pass through."""

    def __init__(self, max_hands: int | None, mode: str = "fast", boxes: dict | None = None):
        from ..fitting.resources import Resources
        from .stages import Preparer

        self.prep = Preparer(max_hands, mode, boxes, Resources())  # one per worker

    def __call__(self, row: dict) -> dict:
        unit = Unit(row["kind"], row["path"], row["key"])
        if unit.kind != "photo":
            return {**row, "payload": b""}
        p = self.prep(unit)
        return {**row, "payload": pickle.dumps(p, protocol=pickle.HIGHEST_PROTOCOL)}


class _FitWrite:
    """Ray actor: fit a batch of prepared photos together, write their folders; fit videos whole."""

    def __init__(self, job, run_id: str, threads: int | None):
        from .threads import configure_threads

        configure_threads(threads)
        from ..fitting.resources import Resources

        self.job, self.run_id = job, run_id
        self.res = Resources()  # one per worker, shared by every batch it fits

    def __call__(self, batch: dict) -> dict:
        from .records import error_record
        from .stages import fit_chunk, save_photo

        job, records, prepared = self.job, [], []
        for kind, path, key, payload in zip(batch["kind"], batch["path"], batch["key"], batch["payload"]):
            unit = Unit(str(kind), str(path), str(key))
            if unit.kind == "video":
                from .video import process_video

                records.append(process_video(unit, job, self.run_id, self.res))
                continue
            p = pickle.loads(payload)
            if p.error is not None:
                records.append(error_record(unit, p.error, p.seconds))
            else:
                prepared.append(p)
        for p, result, err, sec in fit_chunk(prepared, job.fit_options(), res=self.res):
            if err is not None:
                records.append(error_record(p.unit, err, p.seconds + sec))
                continue
            records.append(save_photo(job, p, result, p.seconds + sec, self.run_id))
        from . import store

        return {"record": [store.dumps(r) for r in records]}


def run_ray(todo: list, job, log, run_id: str) -> int:
    """Compute ``todo`` on Ray; every record is appended to ``log``. -> units computed"""
    if not todo:
        return 0
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'handfit[ray]'") from None
    workers = _workers()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kwargs = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                      runtime_env={"env_vars": _worker_env()})
        if not address:
            # Logical CPU slots for a detection actor and a fit actor per worker, even on a 2-core
            # machine: the actors mostly wait on each other, and each runs single-threaded.
            kwargs["num_cpus"] = max(os.cpu_count() or 1, 2 * workers)
        ray.init(address=address or None, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(job.progress)
    ctx.execution_options.preserve_order = True
    opts = job.fit_options()
    # GPUs are those of the cluster, not of the driver; fit actors share them when there are fewer
    # GPUs than workers (two actors on one GPU keep it busier than one).
    gpus = float(ray.cluster_resources().get("GPU", 0)) if opts.device in ("auto", "cuda") else 0.0
    if str(opts.device).startswith("cuda") and gpus == 0:
        raise UsageError("--device cuda was asked for, but the Ray cluster has no GPU")
    gpu = gpus > 0
    per_gpu = min(1.0, gpus / workers) if gpu else 0
    ds = ray.data.from_items([u.to_dict() for u in todo], override_num_blocks=min(len(todo), 4 * workers))
    ds = ds.map(_Detect, fn_constructor_kwargs={"max_hands": opts.max_hands, "mode": opts.detect,
                                             "boxes": job.boxes}, concurrency=workers, num_cpus=1)
    ds = ds.map_batches(_FitWrite, fn_constructor_kwargs={"job": job, "run_id": run_id, "threads": None if gpu else 1},
                        batch_size=job.batch_size, concurrency=workers, num_cpus=1, num_gpus=per_gpu,
                        batch_format="numpy")
    n = 0
    for row in ds.iter_rows():
        log.append(json.loads(row["record"]))
        n += 1
    return n


def _worker_env() -> dict:
    """Environment the Ray workers inherit: handfit's import path and single-threaded pools
    (``HANDFIT_THREADS`` threads when it is set). Not the driver's OMP_NUM_THREADS: the CLI sets that
    to every core, and with several actors per machine each would then use every core."""
    env = {k: os.environ[k] for k in ("PYTHONPATH", "HANDFIT_CACHE", "HANDFIT_NO_FSYNC") if k in os.environ}
    n = os.environ.get("HANDFIT_THREADS", "").strip()
    n = n if n.isdigit() and int(n) >= 1 else "1"
    env.update(OMP_NUM_THREADS=n, NUMBA_NUM_THREADS=n, HANDFIT_THREADS=n)
    return env
