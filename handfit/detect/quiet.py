"""Silencing MediaPipe's native log lines: :func:`quiet_stderr`.

glog/absl and TF Lite print INFO/WARNING lines straight to file descriptor 2
whatever ``GLOG_minloglevel`` says; :func:`quiet_stderr` captures them for the
duration of a MediaPipe call.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

__all__ = ["quiet_stderr"]

# Quiet blocks may overlap across threads (detection ahead in a worker while
# the side check re-detects in the main thread). fd 2 is process-wide, so the
# redirection is too: the first block in saves and redirects it, the last
# block out restores it. Each block saving and restoring on its own would let
# an overlapping block "restore" another block's temporary file for good.
_quiet_lock = threading.Lock()
_quiet = {"depth": 0, "saved": None, "sink": None}


def _quiet_enter() -> bool:
    with _quiet_lock:
        if _quiet["depth"] == 0:
            try:
                sys.stderr.flush()
            except Exception:  # noqa: BLE001
                pass
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2 (embedded interpreters): nothing to silence
                return False
            sink = tempfile.TemporaryFile()
            os.dup2(sink.fileno(), 2)
            _quiet.update(saved=saved, sink=sink)
        _quiet["depth"] += 1
        return True


def _quiet_exit() -> None:
    with _quiet_lock:
        _quiet["depth"] -= 1
        if _quiet["depth"] == 0:
            os.dup2(_quiet["saved"], 2)
            os.close(_quiet["saved"])
            _quiet["sink"].close()
            _quiet.update(saved=None, sink=None)


def _quiet_log() -> str:
    """What native code wrote to fd 2 so far in the current quiet period."""
    with _quiet_lock:
        sink = _quiet["sink"]
        if sink is None:
            return ""
        sink.seek(0)
        return sink.read().decode("utf-8", "replace").strip()


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True):
    """Silence native (C++) writes to file descriptor 2 inside the block.

    glog/absl and TF Lite print INFO/WARNING lines straight to fd 2 whatever
    ``GLOG_minloglevel`` says. They are captured to a temporary file; if the
    block raises, the captured text is attached to the exception as a note.
    Python's ``sys.stderr`` is flushed first so nothing of ours is lost.
    Blocks may nest and overlap across threads (see ``_quiet_enter``).
    """
    if not enabled or not _quiet_enter():
        yield
        return
    try:
        yield
    except BaseException as e:
        text = _quiet_log()
        if text and hasattr(e, "add_note"):
            e.add_note("mediapipe log:\n" + text[-4000:])
        raise
    finally:
        _quiet_exit()
