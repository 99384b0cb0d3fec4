"""The per-unit stages of a batch, shared by both engines (:mod:`.local`, :mod:`.ray_engine`).

plan (what is left to compute) -> :class:`Preparer` (load + detect a photo)
-> :func:`fit_chunk` (fit the hands of several photos together, splitting on
out-of-memory) -> :func:`save_photo` (commit the photo's result folder with
its status.json last). :func:`load_boxes` reads ``--boxes``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError, UsageError
from . import store
from .inputs import Unit
from .records import BatchJob, describe, error_record, photo_record


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
    ``res``: the :class:`~handfit.fitting.resources.Resources` whose detector it uses
    (default: a new one).
    """

    def __init__(self, max_hands: int | None, mode: str = "fast", boxes: dict | None = None, res=None):
        self.max_hands, self.mode, self.boxes = max_hands, mode, boxes or {}
        self.res = res

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
            if self.res is None:
                from ..fitting.resources import Resources

                self.res = Resources()
            det = self.res.detector(self.mode, self.max_hands)
            boxes = self.boxes.get(str(Path(unit.path).resolve()))
            dets = det.detect_in_boxes(photo.rgb, boxes) if boxes is not None else det.detect(photo.rgb)
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


def fit_chunk(items: list[Prepared], opts, fit=None, res=None) -> list:
    """Fit the readable photos of a chunk together. -> [(Prepared, FitResult | None, error | None, seconds)]

    A CUDA out-of-memory error splits the chunk in halves and retries each;
    any other failure of a chunk is retried photo by photo so that one bad
    photo only fails itself. ``fit``: the fitting function (default
    :func:`handfit.api.fit_batch` with the resources ``res``).
    """
    if fit is None:
        import functools

        from .. import api

        fit = functools.partial(api.fit_batch, resources=res)
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
            return fit_chunk(items[:half], opts, fit, res) + fit_chunk(items[half:], opts, fit, res)
        if len(items) == 1:
            return [(items[0], None, f"fit failed: {describe(exc)}", time.perf_counter() - t0)]
        return [r for p in items for r in fit_chunk([p], opts, fit, res)]
    share = (time.perf_counter() - t0) / len(items)
    for r, p in zip(results, items):
        r.image_path = p.unit.path
    return [(p, r, None, share) for p, r in zip(items, results)]


def _empty_cache():
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
