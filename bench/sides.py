"""Which hand model each dev3d frame is fitted with (all its hands are left).

Detects every frame of ../shared/data/dev3d (``--detect`` mode), then decides
the sides as ``handfit fit`` does (:func:`handfit.fitting.pipeline.decide_sides`,
``--check-below`` as FitOptions.side_check_below) and counts the frames that
would be fitted with the right-hand model, before (MediaPipe) and after.

    python bench/sides.py                    # default threshold 0.95
    python bench/sides.py --check-below 1    # fit both models for every hand
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "dev3d")
    ap.add_argument("--detect", default="thorough", choices=["fast", "thorough"])
    ap.add_argument("--check-below", type=float, default=None)
    ap.add_argument("--iters", type=int, default=None, help="FitOptions.side_check_iters (default: its default)")
    args = ap.parse_args(argv)
    from handfit.api import FitOptions
    from handfit.fitting.pipeline import HandItem, decide_sides
    from handfit.fitting.resources import Resources
    from handfit.io import load_image

    check = FitOptions().side_check_below if args.check_below is None else args.check_below
    opts = FitOptions(device="cpu", detect=args.detect, side_check_below=check)
    if args.iters is not None:
        opts.side_check_iters = args.iters
    opts.dense.enabled = False
    res = Resources()
    det = res.detector(args.detect)
    items, labelled, frames = [], 0, 0
    for g in sorted(args.data.rglob("*.gt.json")):
        gt = json.loads(g.read_text())
        labelled += len(gt["hands"])
        frames += 1
        photo = load_image(g.with_name(g.name[: -len(".gt.json")]))
        items += [HandItem(np.asarray(gt["K"], float), d, photo.rgb) for d in det.detect(photo.rgb)]
    before = sum(it.detection.side == "right" for it in items)
    t = time.perf_counter()
    items = decide_sides(items, opts, res)
    secs = time.perf_counter() - t
    dets = [it.detection for it in items]
    after = sum(d.side == "right" for d in dets)
    checked = sum(d.side_source == "fit" for d in dets)
    print(f"frames {frames}, labelled hands {labelled} (all left), detected {len(dets)} ({args.detect})")
    print(f"right-hand model: MediaPipe {before}, after the side check {after}")
    print(f"checked (score < {check}): {checked}, changed: {sum(d.detector_side not in (None, d.side) for d in dets)}, "
          f"{secs:.1f} s for the check ({secs / max(checked, 1):.2f} s per checked hand)")


if __name__ == "__main__":
    main()
