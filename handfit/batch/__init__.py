"""Batches at scale: folders walked recursively, videos, resumable atomic
results, shards, a Ray engine and a gallery (``handfit batch`` / ``handfit merge``).

Library face: :func:`run_batch`. The modules, from the bottom up: inputs
(what to run on), store (atomic folders, summary, resume), threads (CPU
thread pools), records (the job, its options, summary records and exit
codes), stages (load + detect, fit a chunk, write: per unit, for both
engines), video (tracking and temporal smoothing), the engines local
(threads in this process) and ray_engine (Ray Data), runner (run_batch: picks
an engine), gallery (index.html) and merge (shards). A module imports only
from those below it.
"""

from .records import BatchJob, BatchReport, VideoOptions  # noqa: F401
from .runner import run_batch  # noqa: F401

__all__ = ["run_batch", "BatchJob", "BatchReport", "VideoOptions"]
