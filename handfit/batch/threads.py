"""CPU thread pools, configured when a command or a worker starts (never at import).

torch (OpenMP, libgomp) and numba (the CPU renderer's z-buffer) each keep a
pool of threads; by default both size it to every core, and an OpenMP thread
that waits for work spins on its core for a while before it sleeps. Two
handfit processes on one machine then have four spinning pools fighting over
the cores, and each runs several times slower than alone. :func:`configure_threads`
makes waiting threads sleep (``OMP_WAIT_POLICY=PASSIVE``, set before torch
loads OpenMP) and sizes both pools to ``threads`` (default: the cores this
process may use, or ``HANDFIT_THREADS``).
"""

from __future__ import annotations

import os
import sys

from ..parallel import default_threads


def _pool_environment(n: int) -> None:
    """Ask for ``n`` threads and sleeping idle OpenMP threads, through the environment
    torch and numba read when they load (settings already there win)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by libgomp when torch loads it
        os.environ.setdefault("KMP_BLOCKTIME", "0")           # the same for Intel's OpenMP
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    if "numba" not in sys.modules:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(n))


def configure_threads_env(threads: int | None = None) -> int:
    """At a command's start, before torch or numba load: size their pools and make
    idle OpenMP threads sleep, through the environment they read when they load.
    Imports nothing heavy (``--help`` stays instant). Settings already in the
    environment win. ``HANDFIT_THREADS_CONFIG=0`` leaves everything as it is. -> threads
    """
    if os.environ.get("HANDFIT_THREADS_CONFIG") == "0":
        return 0
    n = max(1, int(threads or default_threads()))
    _pool_environment(n)
    return n


def configure_threads(threads: int | None = None) -> int:
    """Size torch's and numba's pools to ``threads`` and make idle OpenMP threads sleep. -> threads

    Call at the start of a command or worker. The wait policy only takes effect
    if torch has not been imported yet; the pool sizes always do.
    """
    n = max(1, int(threads or default_threads()))
    _pool_environment(n)
    import torch

    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass
    return n
