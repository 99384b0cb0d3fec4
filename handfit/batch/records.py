"""What a batch reports: its options and job, the summary records, exit codes.

The bottom layer of :mod:`handfit.batch` besides :mod:`.inputs` and
:mod:`.store`: the engines (:mod:`.local`, :mod:`.ray_engine`), the stages
(:mod:`.stages`), videos (:mod:`.video`) and the CLI build on these types and
record helpers; nothing here imports them.

Exit codes (:attr:`BatchReport.exit_code`): 0 when any hand was fitted, 3
when inputs were read but no hand was found, 4 when no input could be read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from . import store
from .inputs import Unit


@dataclass
class VideoOptions:
    every: int = 1              # keep one frame in `every`
    start: int = 0              # first frame index read
    end: int | None = None      # stop before this frame index


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
    def suspect(self) -> int:
        """Hands (frame-hands for videos) the verdict calls ``suspect``."""
        return sum(int(r.get("suspect", 0) or 0) for r in self.records)

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
    """The per-hand numbers the summary and the gallery show, and the hand's verdict
    (``quality`` "ok" or "suspect", ``quality_reasons``: handfit/fitting/quality.py)."""
    m = {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in h.metrics.items()
         if isinstance(v, (int, float, np.integer, np.floating))}
    return {"side": h.side, "score": round(float(h.score), 4), **m, "quality": getattr(h, "quality", "ok"),
            "quality_reasons": list(getattr(h, "quality_reasons", None) or [])}


def suspect_count(hands) -> int:
    """How many of these HandResults the verdict calls ``suspect``."""
    return sum(getattr(h, "quality", "ok") == "suspect" for h in hands)


def reason_kind(reason: str) -> str:
    """A reason without its values: "far from evidence: index4 0.31 box sides (120 px)" ->
    "far from evidence", "low detection score 0.12" -> "low detection score"."""
    head = reason.split(":", 1)[0].strip()
    words = head.split()
    while words and words[-1].replace(".", "", 1).replace("%", "").isdigit():
        words.pop()
    return " ".join(words) or head


def video_quality(suspects: list, hand_metrics: list) -> int:
    """Add each track's verdict to its ``hand_metrics`` entry (in place): ``quality``
    ("suspect" when any of its frames is), ``suspect`` (its suspect frames), ``suspect_frames``
    (their frame numbers) and ``suspect_reasons`` ({reason kind: frames}, :func:`reason_kind`).
    suspects: [(frame number, track index, reasons)] of the suspect frame-hands.
    -> how many frame-hands are suspect (the video record's ``suspect``)."""
    for t, m in enumerate(hand_metrics):
        mine = [(f, reasons) for f, ti, reasons in suspects if ti == t]
        kinds: dict = {}
        for _, reasons in mine:
            for r in reasons:
                kinds[reason_kind(r)] = kinds.get(reason_kind(r), 0) + 1
        m.update({"quality": "suspect" if mine else "ok", "suspect": len(mine),
                  "suspect_frames": [int(f) for f, _ in mine], "suspect_reasons": kinds})
    return len(suspects)


def photo_record(unit: Unit, result, seconds: float, run_id: str) -> dict:
    status = "ok" if result.hands else "no_hand"
    return {"path": unit.path, "key": unit.key, "kind": unit.kind, "status": status, "hands": len(result.hands),
            "suspect": suspect_count(result.hands), "seconds": round(seconds, 3),
            "message": "" if result.hands else "no hand found",
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
