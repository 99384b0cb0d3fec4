"""Wall-clock time to fit one hand at default settings.

    python bench/timing.py                       # examples/hand.jpg, CPU and CUDA if present
    python bench/timing.py photo.jpg --repeats 5 --device cpu

The first fit of a process builds caches and JIT-compiles the CPU rasterizer;
it is reported separately and left out of the median.
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
        for dense in (False, True):
            times, fit_s = [], []
            n = 0
            for i in range(args.repeats + 1):
                if dev == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                res = handfit.fit(args.image, device=dev, dense=DenseStage(enabled=dense))
                if dev == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
                fit_s.append(sum(h.seconds for h in res.hands))
                n = len(res.hands)
            med = statistics.median(times[1:])
            stages = "keypoint + dense" if dense else "keypoint only"
            print(f"| {dev} | {stages} | {times[0]:.2f} | {med:.2f} | {n} | {med / max(n, 1):.2f} "
                  f"| {statistics.median(fit_s[1:]):.2f} |")


if __name__ == "__main__":
    main()
