"""The batch job: inputs -> result folders, summary.jsonl, index.html.

:func:`run_batch` is the library face of ``handfit batch``. The local engine
is a three-stage pipeline in one process: a worker thread loads and detects
the next chunk of photos while the main thread fits the current one (the
hands of up to ``batch_size`` photos in one optimisation per side), and a
writer thread saves finished results behind it. Videos are fitted one at a
time (:mod:`handfit.batch.video`). The Ray engine (:mod:`.ray_engine`) runs
the same stages as a Ray Data pipeline with the same outputs.

Exit codes (:attr:`BatchReport.exit_code`): 0 when any hand was fitted, 3
when inputs were read but no hand was found, 4 when no input could be read.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageError, UsageError
from . import store
from .inputs import Unit, collect, parse_shard, shard


@dataclass
class VideoOptions:
    every: int = 1              # keep one frame in `every`
    start: int = 0              # first frame index read
    end: int | None = None      # stop before this frame index
    smooth: bool = True         # temporal smoothness on pose and translation
    smooth_weight: float = 1.0  # its weight (see docs)
    warm_iters: int = 60        # keypoint iterations of a warm-started frame


@dataclass
class BatchJob:
    """Everything a batch needs besides its inputs."""

    out: Path
    options: object = None               # handfit.options.FitOptions; None -> defaults
    batch_size: int = 16
    overwrite: bool = False
    shard: tuple = (1, 1)                # (K, N)
    video: VideoOptions = field(default_factory=VideoOptions)
    progress: bool = False
    gallery: bool = True
    boxes: dict | None = None            # {absolute photo path: boxes}, see load_boxes

    def __post_init__(self):
        self.out = Path(self.out)
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        v = self.video
        if v.every < 1 or v.start < 0:
            raise UsageError("--every must be at least 1 and --start at least 0")
        if v.end is not None and v.end <= v.start:
            # Checked here, not per video: every video would otherwise become an error line.
            raise UsageError(f"--end {v.end} must be greater than --start {v.start}")

    @property
    def tag(self) -> str:
        return store.shard_tag(*self.shard)

    @property
    def summary_path(self) -> Path:
        return self.out / store.summary_name(*self.shard)

    def fit_options(self):
        if self.options is None:
            from ..options import FitOptions

            self.options = FitOptions()
        return self.options


@dataclass
class BatchReport:
    records: list               # one summary record per unit of this shard, in order
    summary: Path
    computed: int               # units fitted by this run (the others were finished before)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)

    @property
    def hands(self) -> int:
        return sum(int(r.get("hands", 0)) for r in self.records)

    @property
    def exit_code(self) -> int:
        return exit_code(self.records)


def exit_code(records) -> int:
    """0 any hand fitted; 3 inputs read but no hand; 4 nothing readable (or no input)."""
    if any(r.get("hands", 0) > 0 for r in records):
        return 0
    if any(r["status"] in ("ok", "no_hand") for r in records):
        return 3
    return 4


# ---------------------------------------------------------------- records


def hand_summary(h) -> dict:
    """The per-hand numbers the summary and the gallery show."""
    m = {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in h.metrics.items()
         if isinstance(v, (int, float, np.integer, np.floating))}
    return {"side": h.side, "score": round(float(h.score), 4), **m}


def photo_record(unit: Unit, result, seconds: float, run_id: str) -> dict:
    status = "ok" if result.hands else "no_hand"
    return {"path": unit.path, "key": unit.key, "kind": unit.kind, "status": status, "hands": len(result.hands),
            "seconds": round(seconds, 3), "message": "" if result.hands else "no hand found",
            "width": result.width, "height": result.height,
            "hand_metrics": [hand_summary(h) for h in result.hands], "overlay": f"{unit.key}/overlay.png",
            "run": run_id}


def describe(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` for an error line of the summary."""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def error_record(unit: Unit, message: str, seconds: float = 0.0) -> dict:
    return {"path": unit.path, "key": unit.key, "kind": unit.kind, "status": "error", "hands": 0,
            "seconds": round(seconds, 3), "message": message}


def write_photo(job: BatchJob, unit: Unit, result, record: dict) -> dict:
    """Save one photo's result folder atomically, its status.json last inside it."""
    from ..io.save import save_result

    def fill(tmp: Path):
        save_result(result, tmp.parent, tmp.name)
        (tmp / store.STATUS).write_text(store.dumps(record))

    store.commit(job.out, unit.key, fill, job.tag)
    return record


def save_photo(job: BatchJob, p: "Prepared", result, seconds: float, run_id: str) -> dict:
    """Write one fitted photo's folder. -> its summary record, an ``error`` one when writing failed
    (any exception: one photo must not stop the batch; KeyboardInterrupt passes)."""
    try:
        # seconds: this photo's load + detection + its share of the fit (writing is not counted).
        return write_photo(job, p.unit, result, photo_record(p.unit, result, seconds, run_id))
    except OSError as exc:
        return error_record(p.unit, f"cannot write {job.out / p.unit.key}: {exc}")
    except Exception as exc:  # noqa: BLE001
        return error_record(p.unit, f"cannot write {job.out / p.unit.key}: {describe(exc)}")


# ---------------------------------------------------------------- planning


def plan(units: list[Unit], job: BatchJob) -> tuple[list[Unit], dict]:
    """Split this shard's units into those to compute and those already finished.

    -> (todo, {key: finished record})
    """
    done = {}
    if not job.overwrite:
        for u in units:
            rec = store.read_status(job.out / u.key)
            if rec is not None:  # keyed by output folder, so `data/` and `./data` resume alike
                done[u.key] = rec
    return [u for u in units if u.key not in done], done


# ---------------------------------------------------------------- photos


@dataclass
class Prepared:
    unit: Unit
    photo: object = None        # handfit.io.image.Photo
    detections: list = None
    error: str | None = None
    seconds: float = 0.0        # load + detect time


class Preparer:
    """Load and detect photos (runs in a worker thread or a Ray task).

    Never raises for one bad photo: any failure to load or detect it becomes
    its ``error`` (KeyboardInterrupt and SystemExit still end the run).
    ``boxes``: {absolute photo path: [(x0, y0, x1, y1[, side]), ...]}; a photo
    listed there is searched only inside its boxes (see :func:`load_boxes`).
    """

    def __init__(self, max_hands: int | None, mode: str = "fast", boxes: dict | None = None):
        self.max_hands, self.mode, self.boxes = max_hands, mode, boxes or {}
        self._det = None

    def __call__(self, unit: Unit) -> Prepared:
        from ..io.image import load_image

        t0 = time.perf_counter()
        try:
            photo = load_image(unit.path)
        except ImageError as exc:
            return Prepared(unit, error=str(exc), seconds=time.perf_counter() - t0)
        except OSError as exc:
            return Prepared(unit, error=f"{unit.path}: {exc.strerror or exc}", seconds=time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - one bad photo must not stop the batch
            return Prepared(unit, error=f"{unit.path}: cannot read: {describe(exc)}",
                            seconds=time.perf_counter() - t0)
        try:
            if self._det is None:
                from ..detect import Detector

                self._det = Detector(max_hands=self.max_hands, mode=self.mode)
            boxes = self.boxes.get(str(Path(unit.path).resolve()))
            dets = self._det.detect_in_boxes(photo.rgb, boxes) if boxes is not None else self._det.detect(photo.rgb)
        except Exception as exc:  # noqa: BLE001 - one bad photo must not stop the batch
            return Prepared(unit, error=f"detection failed: {describe(exc)}", seconds=time.perf_counter() - t0)
        return Prepared(unit, photo, dets, seconds=time.perf_counter() - t0)


def load_boxes(path) -> dict:
    """Read a JSON file of hand boxes per photo: ``{"photo path": [[x0, y0, x1, y1], [x0, y0, x1, y1, "left"],
    ...], ...}``. Relative photo paths are taken from the JSON file's folder.
    -> {absolute path: list of boxes}. Raises UsageError naming the bad entry."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--boxes {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--boxes {path}: expected an object mapping photo paths to lists of boxes")
    out = {}
    for name, boxes in data.items():
        ok = isinstance(boxes, list) and all(
            isinstance(b, (list, tuple)) and len(b) in (4, 5) and all(isinstance(v, (int, float)) for v in b[:4])
            and (len(b) == 4 or b[4] in ("left", "right")) for b in boxes)
        if not ok:
            raise UsageError(f"--boxes {path}: {name!r} must map to a list of [x0, y0, x1, y1] or "
                             "[x0, y0, x1, y1, \"left\"|\"right\"]")
        out[str((path.parent / name).resolve())] = [tuple(b) for b in boxes]
    return out


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def fit_chunk(items: list[Prepared], opts, fit=None) -> list:
    """Fit the readable photos of a chunk together. -> [(Prepared, FitResult | None, error | None, seconds)]

    A CUDA out-of-memory error splits the chunk in halves and retries each;
    any other failure of a chunk is retried photo by photo so that one bad
    photo only fails itself.
    """
    from .. import api

    fit = fit or api.fit_batch
    if not items:
        return []
    t0 = time.perf_counter()
    try:
        results = fit([p.photo for p in items], detections=[p.detections for p in items], options=opts)
    except Exception as exc:  # noqa: BLE001 - decide below how to recover
        if _is_oom(exc):
            _empty_cache()
            if len(items) == 1:
                return [(items[0], None, f"out of memory: {str(exc).splitlines()[0]}", 0.0)]
            half = len(items) // 2
            return fit_chunk(items[:half], opts, fit) + fit_chunk(items[half:], opts, fit)
        if len(items) == 1:
            return [(items[0], None, f"fit failed: {describe(exc)}", time.perf_counter() - t0)]
        return [r for p in items for r in fit_chunk([p], opts, fit)]
    share = (time.perf_counter() - t0) / len(items)
    for r, p in zip(results, items):
        r.image_path = p.unit.path
    return [(p, r, None, share) for p, r in zip(items, results)]


def _empty_cache():
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, unit="input")


def run_local(todo: list[Unit], job: BatchJob, log: store.SummaryLog, run_id: str, fit=None) -> int:
    """Compute ``todo`` in this process; every finished unit is committed and logged. -> units computed"""
    opts = job.fit_options()
    photos = [u for u in todo if u.kind == "photo"]
    videos = [u for u in todo if u.kind == "video"]
    chunks = [photos[i:i + job.batch_size] for i in range(0, len(photos), job.batch_size)]
    prep = Preparer(opts.max_hands, opts.detect, job.boxes)
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
            for p, r, err, sec in fit_chunk(good, opts, fit):
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
        from .video import process_video

        log.append(process_video(u, job, run_id))
        computed += 1
        bar.update(1)
    bar.close()
    return computed


# ---------------------------------------------------------------- the job


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
            f"{r.count('error')} error(s); {r.hands} hand(s); {r.computed} computed now -> {out} "
            f"(summary: {r.summary.name})")


def environ_progress() -> bool:
    return sys.stderr.isatty() or os.environ.get("HANDFIT_PROGRESS") == "1"
