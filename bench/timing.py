"""Wall-clock time to fit one hand at default settings.

    python bench/timing.py                       # examples/hand.jpg, CPU and CUDA if present
    python bench/timing.py photo.jpg --repeats 5 --device cpu
    python bench/timing.py --repeats 12 --device cpu --candidate "iters=32 fine_iters=4"

The first fit of a process builds caches and JIT-compiles the CPU rasterizer;
it is reported separately and left out of the median. The keypoint-only and the
default fit alternate, and the last line gives the ratio of their
``HandResult.seconds`` pair by pair. Each ``--candidate`` (dense-stage
``NAME=VALUE`` settings, as ``--set`` takes them in bench/synthetic.py) joins the
alternation, and its ``HandResult.seconds`` are given over the default's, fit by fit.
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
    ap.add_argument("--candidate", action="append", default=[], metavar="'NAME=VALUE ...'",
                    help="a dense-stage setting to time against the default (repeatable)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "bench"))
    from _overrides import dense_stage

    import handfit
    from handfit.options import DenseStage

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"image {args.image}; torch threads {torch.get_num_threads()}")
    print("| device | stages | first run s | median s per photo | hands | s per hand | median HandResult.seconds |")
    print("|---|---|---|---|---|---|---|")
    for dev in devices:
        # The two settings alternate, fit by fit, so that a host whose speed drifts
        # (this one's does, by tens of percent over minutes) slows both alike.
        stages = {False: DenseStage(enabled=False), True: DenseStage()}
        stages.update({c: dense_stage(c.split()) for c in args.candidate})
        times = {k: [] for k in stages}
        fit_s = {k: [] for k in stages}
        n = {}
        for i in range(args.repeats + 1):
            for key, stage in stages.items():
                if dev == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                res = handfit.fit(args.image, device=dev, dense=stage)
                if dev == "cuda":
                    torch.cuda.synchronize()
                times[key].append(time.perf_counter() - t)
                fit_s[key].append(sum(h.seconds for h in res.hands))
                n[key] = len(res.hands)
        for key in stages:
            med = statistics.median(times[key][1:])
            name = {False: "keypoint only", True: "keypoint + dense"}.get(key, f"keypoint + dense, {key}")
            print(f"| {dev} | {name} | {times[key][0]:.2f} | {med:.2f} | {n[key]} | {med / max(n[key], 1):.2f} "
                  f"| {statistics.median(fit_s[key][1:]):.2f} |")
        ratios = [d / k for k, d in zip(fit_s[False][1:], fit_s[True][1:]) if k > 0]
        if ratios:
            print(f"\n{dev}: HandResult.seconds, default / keypoint only, fit by fit: median {statistics.median(ratios):.2f}"
                  f" (range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} pairs)")
        for c in args.candidate:
            r = [a / b for a, b in zip(fit_s[c][1:], fit_s[True][1:]) if b > 0]
            k = [a / b for a, b in zip(fit_s[c][1:], fit_s[False][1:]) if b > 0]
            print(f"{dev}: {c}: HandResult.seconds over the default's, fit by fit: median {statistics.median(r):.3f}; "
                  f"over keypoint only: median {statistics.median(k):.2f}")


if __name__ == "__main__":
    main()
