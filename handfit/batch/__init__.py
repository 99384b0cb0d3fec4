"""Batches at scale: folders walked recursively, videos, resumable atomic
results, shards, a Ray engine and a gallery (``handfit batch`` / ``handfit merge``).

Library face: :func:`run_batch`; the modules are inputs (what to run on),
store (atomic folders, summary, resume), runner (the local pipeline), video
(tracking and temporal smoothing), gallery (index.html), merge (shards),
ray_engine (Ray Data) and threads (CPU thread pools).
"""

from .runner import BatchJob, BatchReport, VideoOptions, run_batch  # noqa: F401

__all__ = ["run_batch", "BatchJob", "BatchReport", "VideoOptions"]
