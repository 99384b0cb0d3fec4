"""Dense-stage ablations on dev3d: each setting's keypoint and default (dense) fit.

Runs ``handfit.eval.evaluate`` (what ``handfit eval DATA --compare`` runs) once
per setting in one process, with the detections and the multi-view landmarks
computed once and reused (MediaPipe is deterministic), and prints PA-MPJPE,
2D error and seconds per hand of the keypoint and the dense fit.

A setting (``--try``, repeatable) is a space-separated list of ``PATH=VALUE``
FitOptions fields as ``--set`` takes them, ``-`` for the defaults; ``--set``
applies to every setting:

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/ablation.py --every 4 \\
        --try - "dense.weights.depth=1" "dense.iters=60 dense.geometry_downsample=2"

The side decisions and keypoint fits are cached too, keyed by the options
they depend on, so settings that change only the dense stage run only it
(the keypoint variant's seconds are then those of its first run).

``--perturb SIGMA`` also fits every hand a second time with the dense
stage's starting pose perturbed by Gaussian noise of SIGMA radians per pose
value (its evidence, the detections and the keypoint fit that its depth term
refers to, unchanged) and reports the median and the maximum over hands of the
largest keypoint movement between the two fits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import _common as C


def movements(ev, shaken, wrist_relative: bool) -> list:
    """Per hand fitted both times: the largest keypoint movement (mm) of the dense fit between
    the two evaluations; with ``wrist_relative`` each fit's wrist moved to the origin first
    (how much is the whole hand's, its depth above all, how much its articulation and size)."""
    out = []
    for a, b in zip(ev.hands, shaken.hands):
        pa, pb = a.preds.get("dense", {}).get("kp3d"), b.preds.get("dense", {}).get("kp3d")
        if pa is None or pb is None:
            continue
        if wrist_relative:
            pa, pb = pa - pa[:1], pb - pb[:1]
        out.append(float(np.linalg.norm(pa - pb, axis=-1).max() * 1000))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--try", dest="tries", nargs="+", action="extend", default=None, metavar="'PATH=VALUE ...'",
                    help="settings to compare, each a space-separated list of FitOptions PATH=VALUE ('-': the defaults)")
    C.add_set_option(ap)
    ap.add_argument("--data", type=Path, default=C.data("dev3d"))
    ap.add_argument("--every", type=int, default=1, help="every N-th image (1: all)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--variants", default="keypoint,dense")
    ap.add_argument("--json", type=Path, help="append one JSON line per setting here")
    ap.add_argument("--perturb", type=float, default=None, metavar="SIGMA",
                    help="also measure the dense stage's stability (radians of pose noise)")
    args = ap.parse_args(argv)
    args.tries = args.tries or ["-"]

    from handfit.eval import evaluate, open_dataset, select

    records = select(open_dataset(args.data), every=args.every, limit=args.limit)
    res = C.cached_resources()
    detector = res.detector("thorough")
    noise = {"sigma": None}

    def start(fit, opts):  # while noise["sigma"] is set, the dense stage starts from a shaken pose
        return C.shaken_pose(fit.params, noise["sigma"], C.batch_rng(fit)) if noise["sigma"] else None

    staged = C.StagedFit(res, start=start)
    variants = tuple(["mediapipe"] + args.variants.split(","))
    rows = []
    for s in args.tries:
        sets = args.set + [s]
        opts = C.fit_options(sets, {"device": "cpu"})
        t = time.perf_counter()
        ev = evaluate(records, opts, variants, detector=detector, resources=res, fit_batch=staged, warmup=False)
        row = {"setting": s, "seconds": round(time.perf_counter() - t, 1)}
        for v in variants[1:]:
            m = ev.summary[v]
            row[v] = {k: m[k] for k in ("pa_mpjpe_mm", "kp2d_px", "s_per_hand", "n")}
        if args.perturb and "dense" in variants:
            noise["sigma"] = args.perturb
            shaken = evaluate(records, opts, variants, detector=detector, resources=res, fit_batch=staged,
                              warmup=False)
            noise["sigma"] = None
            moves, rel = movements(ev, shaken, False), movements(ev, shaken, True)
            row["perturb"] = {"sigma": args.perturb, "median_mm": round(float(np.median(moves)), 3),
                              "max_mm": round(max(moves), 3), "n": len(moves),
                              "wrist_relative_median_mm": round(float(np.median(rel)), 3),
                              "wrist_relative_max_mm": round(max(rel), 3)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    res.close()
    print(f"\n{len(records)} images of {args.data}\n")
    head = "| setting | " + " | ".join(f"{v} PA mm | {v} 2D px | {v} s/hand" for v in variants[1:]) + " |"
    print(head)
    print("|" + "---|" * (1 + 3 * (len(variants) - 1)))
    for r in rows:
        cells = [f"{r[v]['pa_mpjpe_mm']:.2f} | {r[v]['kp2d_px']:.2f} | {r[v]['s_per_hand']:.2f}" for v in variants[1:]]
        if "perturb" in r:
            q = r["perturb"]
            cells.append(f"perturbed: median {q['median_mm']:.2f} mm, max {q['max_mm']:.2f} mm "
                         f"(wrist-relative {q['wrist_relative_median_mm']:.2f} / {q['wrist_relative_max_mm']:.2f})")
        print(f"| `{r['setting']}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
