"""3D effect of multi-view 2D evidence (FitOptions.views) on dev3d, keypoint fit only.

Runs ``handfit.eval.evaluate`` (what ``handfit eval DATA --no-appearance``
runs) once per setting, in one process: ``views`` N (0 = off) and the spread
weighting's sigma (``FitOptions.spread_sigma``; 0 = the fused keypoints with
every keypoint weighted alike). Detections and the views' landmarks are
cached across settings (MediaPipe is deterministic), so each setting costs its
keypoint fits. Prints PA-MPJPE, root-relative MPJPE and 2D px of the
``mediapipe`` variant (raw detections) and the keypoint fit.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/research/multiview_fit.py \\
        --try "views=0 spread_sigma=0" "views=8 spread_sigma=0" "views=8" [--limit N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

TRIES = ["views=0 spread_sigma=0", "views=8 spread_sigma=0", "views=8 spread_sigma=0.02"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--try", dest="tries", nargs="+", action="extend", default=None, metavar="'PATH=VALUE ...'",
                    help=f"settings to compare, each a space-separated list of FitOptions PATH=VALUE "
                         f"(default: {' | '.join(TRIES)})")
    C.add_set_option(ap)
    ap.add_argument("--data", type=Path, default=C.data("dev3d"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=1, help="images fitted together (evaluate's batch_size)")
    args = ap.parse_args(argv)

    from handfit.eval import evaluate, open_dataset, select

    records = select(open_dataset(args.data), limit=args.limit)
    res = C.cached_resources()
    out = []
    for s in args.tries or TRIES:
        opts = C.fit_options(args.set + [s], {"device": "cpu", "dense.enabled": False})
        t = time.perf_counter()
        ev = evaluate(records, opts, ("mediapipe", "keypoint"), detector=res.detector(opts.detect),
                      resources=res, warmup=False, batch_size=args.batch_size)
        sec = time.perf_counter() - t
        m, k = ev.summary["mediapipe"], ev.summary["keypoint"]
        out.append((opts.views, opts.spread_sigma, k["n"], m["pa_mpjpe_mm"], m["kp2d_px"], k["pa_mpjpe_mm"],
                    k["rr_mpjpe_mm"], k["kp2d_px"], k["s_per_hand"], sec))
        print(f"{C.describe([s])}: keypoint PA {k['pa_mpjpe_mm']:.2f} mm, 2D {k['kp2d_px']:.2f} px ({sec:.0f} s)",
              file=sys.stderr, flush=True)
    res.close()
    print(f"\n{'views':>5}{'sigma':>7}{'hands':>7}{'MP PA mm':>10}{'MP 2D px':>10}{'kp PA mm':>10}{'kp RR mm':>10}"
          f"{'kp 2D px':>10}{'s/hand':>8}")
    for r in out:
        print(f"{r[0]:>5}{r[1]:>7.3f}{r[2]:>7}{r[3]:>10.2f}{r[4]:>10.2f}{r[5]:>10.2f}{r[6]:>10.2f}{r[7]:>10.2f}"
              f"{r[8]:>8.2f}")


if __name__ == "__main__":
    main()
