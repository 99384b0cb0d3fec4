"""Independent calls side by side: :func:`each`, and the process's thread count;
:func:`one_torch_thread` for the stages whose tensors are too small to share out.

The landmark model (one MediaPipe graph per call), GrabCut and PNG encoding each use one
core and release the GIL. Where a step makes several such calls that do not depend on one
another (the views of a hand's crop, the frames of a chunk), :func:`each` runs them in a
small pool of threads, one per core this process may use. Each call gives what it would
alone, so the results are identical with one thread or many.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

__all__ = ["available_cores", "default_threads", "each", "one_torch_thread", "submit", "workers"]

_PREFIX = "handfit-each"
_pool: dict = {}
_pool_lock = threading.Lock()


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """``HANDFIT_THREADS``, else ``OMP_NUM_THREADS``, else :func:`available_cores`."""
    for name in ("HANDFIT_THREADS", "OMP_NUM_THREADS"):
        env = os.environ.get(name, "")
        if env.strip().isdigit():
            return max(1, int(env))
    return available_cores()


def workers() -> int:
    """Threads :func:`each` uses: :func:`default_threads`, at most 4 (beyond that the
    calls it runs are too few to gain)."""
    return max(1, min(4, default_threads()))


def each(fn, items) -> list:
    """``[fn(x) for x in items]``, the calls spread over :func:`workers` threads.

    In one thread when there is one worker or one item, or when called from inside
    another :func:`each` call (a nested call never waits on its own pool)."""
    items = list(items)
    n = workers()
    if n < 2 or len(items) < 2 or threading.current_thread().name.startswith(_PREFIX):
        return [fn(x) for x in items]
    return list(_get_pool(n).map(fn, items))


def _get_pool(n: int) -> ThreadPoolExecutor:
    with _pool_lock:
        pool = _pool.get(n)
        if pool is None:
            pool = _pool[n] = ThreadPoolExecutor(n, thread_name_prefix=_PREFIX)
    return pool


def submit(fn, *args):
    """``fn(*args)`` on one of :func:`each`'s threads -> a :class:`concurrent.futures.Future`
    (with one worker, or from inside a worker, run now and returned done). The caller bounds
    how many it keeps pending."""
    from concurrent.futures import Future

    n = workers()
    if n < 2 or threading.current_thread().name.startswith(_PREFIX):
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut
    return _get_pool(n).submit(fn, *args)


@contextmanager
def one_torch_thread():
    """torch's CPU ops on one thread inside the block (in the calling thread), as before after it.

    A video track's keypoint and temporal fit runs thousands of small ops on its frames'
    joints: sharing each out over the cores costs more than it saves (the asl clip's 150
    frames, 2 cores: 14.4 s in two threads, 12.1 s in one). A few ops round otherwise on one
    thread: that clip's outputs are identical, dev3d_seq's sequence default moves from
    7.948 to 7.951 mm, and a track's numbers no longer depend on the machine's cores. Not for
    a photo batch's stages, whose figures are kept (two of nine dev photos fitted otherwise). Threads that start inside the block (torch reads its
    count once per thread) keep one torch thread."""
    import torch

    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)
