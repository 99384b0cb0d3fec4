"""CPU contention: one `handfit fit` alone, then two at once, with and without
handfit's thread configuration, in one run.

    python bench/research/contention.py [IMAGE] [--no-dense] [--modes configured,unconfigured]

For each mode: the wall time of one fit alone, then of two identical fits
started together; the ratio (slower of the pair / alone) is the figure that
must stay <= 2.5. "unconfigured" sets HANDFIT_THREADS_CONFIG=0, i.e. torch's
and numba's own defaults (every core each, spinning OpenMP waits), which is
how handfit ran before. The children inherit no OMP_/NUMBA_ settings from this
shell, so that the defaults are really the defaults.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

CLEAN = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
         "HANDFIT_THREADS", "HANDFIT_THREADS_CONFIG")


def launch(image, out, extra, mode):
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    env["PYTHONPATH"] = os.pathsep.join([str(C.REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    if mode == "unconfigured":
        env["HANDFIT_THREADS_CONFIG"] = "0"
    cmd = [sys.executable, "-m", "handfit.cli", "fit", str(image), "-o", str(out), "-q", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def timed(procs, cap: float):
    """Wall seconds of each process; a process still running after ``cap`` s is killed and reported as inf."""
    t0 = time.perf_counter()
    left = dict(enumerate(procs))
    times = [float("inf")] * len(procs)
    while left:
        if time.perf_counter() - t0 > cap:
            for p in left.values():
                p.kill()
                p.wait()
            break
        for i, p in list(left.items()):
            if p.poll() is not None:
                times[i] = time.perf_counter() - t0
                if p.returncode != 0:
                    raise SystemExit(f"fit failed: {p.stderr.read()}")
                del left[i]
        time.sleep(0.05)
    return times


def fmt(t: float) -> str:
    return f"{t:.1f}" if t < float("inf") else "> cap"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?", default=str(C.EXAMPLE))
    ap.add_argument("--no-dense", action="store_true", help="keypoint stage only")
    ap.add_argument("--modes", default="configured,unconfigured")
    ap.add_argument("--cap", type=float, default=600, help="kill a fit still running after this many seconds")
    args = ap.parse_args()
    extra = ["--no-dense"] if args.no_dense else []
    print(f"{os.cpu_count()} CPUs; image {args.image}; {'keypoint stage only' if extra else 'default fit'}")
    print("| mode | alone s | pair s (each) | slower / alone |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            timed([launch(args.image, Path(tmp) / "warm", extra, mode)], args.cap)  # caches warm, like a user's second run
            alone = timed([launch(args.image, Path(tmp) / "a", extra, mode)], args.cap)[0]
            pair = timed([launch(args.image, Path(tmp) / f"p{i}", extra, mode) for i in range(2)], args.cap)
            ratio = max(pair) / alone if alone < float("inf") else float("nan")
            print(f"| {mode} | {fmt(alone)} | {fmt(pair[0])}, {fmt(pair[1])} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
