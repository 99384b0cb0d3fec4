"""Wall-clock time to fit one hand at default settings.

    python bench/timing.py                       # examples/hand.jpg, CPU and CUDA if present
    python bench/timing.py photo.jpg --repeats 5 --device cpu

The first fit of a process builds caches and JIT-compiles the CPU rasterizer;
it is reported separately and left out of the median. The keypoint-only and the
default fit alternate, and the last line gives the ratio of their
``HandResult.seconds`` pair by pair.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?", default=str(REPO / "examples" / "hand.jpg"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: every available one)")
    args = ap.parse_args(argv)

    import handfit
    from handfit.options import DenseStage

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"image {args.image}; torch threads {torch.get_num_threads()}")
    print("| device | stages | first run s | median s per photo | hands | s per hand | median HandResult.seconds |")
    print("|---|---|---|---|---|---|---|")
    for dev in devices:
        # The two settings alternate, fit by fit, so that a host whose speed drifts
        # (this one's does, by tens of percent over minutes) slows both alike.
        times = {False: [], True: []}
        fit_s = {False: [], True: []}
        n = {}
        for i in range(args.repeats + 1):
            for dense in (False, True):
                if dev == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                res = handfit.fit(args.image, device=dev, dense=DenseStage(enabled=dense))
                if dev == "cuda":
                    torch.cuda.synchronize()
                times[dense].append(time.perf_counter() - t)
                fit_s[dense].append(sum(h.seconds for h in res.hands))
                n[dense] = len(res.hands)
        for dense in (False, True):
            med = statistics.median(times[dense][1:])
            stages = "keypoint + dense" if dense else "keypoint only"
            print(f"| {dev} | {stages} | {times[dense][0]:.2f} | {med:.2f} | {n[dense]} | {med / max(n[dense], 1):.2f} "
                  f"| {statistics.median(fit_s[dense][1:]):.2f} |")
        ratios = [d / k for k, d in zip(fit_s[False][1:], fit_s[True][1:]) if k > 0]
        if ratios:
            print(f"\n{dev}: HandResult.seconds, default / keypoint only, fit by fit: median {statistics.median(ratios):.2f}"
                  f" (range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} pairs)")


if __name__ == "__main__":
    main()
