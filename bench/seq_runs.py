"""Per-run figures of a ``handfit eval --sequence`` output, read back from its predictions.json.

    python bench/seq_runs.py /tmp/seqeval

Prints, per run and over all runs: each variant's PA-MPJPE (mm) and acceleration error
(mm/frame², recomputed here from the keypoints with ``handfit.eval.metrics``, a check on
metrics.json), the frames' count, and ``still``: the acceleration error of a prediction that
never changes its articulation (the mean norm of the truth's own root-relative acceleration),
the scale against which ``accel_mm`` reads. Works on a partial output (the runs done so far).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import _common as C
from handfit.eval import metrics as M


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the -o folder of handfit eval --sequence")
    args = ap.parse_args(argv)
    variants, runs = C.read_predictions(args.out)
    pooled = {v: {"pa": [], "acc": []} for v in variants + ["still"]}
    print("| run | frames | " + " | ".join(f"{v} PA / accel" for v in variants) + " | still accel |")
    print("|---|---|" + "---|" * (len(variants) + 1))
    for (run, _), hs in runs.items():
        gt = np.stack([np.array(h["gt_3d"], float) for h in hs]) * 1000.0
        cells = []
        for v in variants:
            ok = np.array([v in h for h in hs])
            pred = np.stack([np.array(h[v]["keypoints_3d"], float) if v in h else np.full((21, 3), np.nan)
                             for h in hs]) * 1000.0
            pa = M.pa_mpjpe(pred[ok], gt[ok]) if ok.any() else np.array([])
            acc = M.accel_errors(np.nan_to_num(pred), gt, ok)
            pooled[v]["pa"].extend(pa)
            pooled[v]["acc"].extend(acc[np.isfinite(acc)])
            cells.append(f"{_mean(pa):.2f} / {_mean(acc):.2f}")
        still = M.accel_errors(np.repeat(gt[:1], len(gt), 0), gt)   # one articulation held: error = |accel_gt|
        pooled["still"]["acc"].extend(still[np.isfinite(still)])
        print(f"| {run} | {len(hs)} | " + " | ".join(cells) + f" | {_mean(still):.2f} |")
    print(f"| all | {sum(len(r) for r in runs.values())} | " + " | ".join(f"{_mean(pooled[v]['pa']):.2f} / {_mean(pooled[v]['acc']):.2f}"
                                               for v in variants) + f" | {_mean(pooled['still']['acc']):.2f} |")
    return 0


def _mean(a) -> float:
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


if __name__ == "__main__":
    sys.exit(main())
