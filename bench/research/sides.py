"""Which hand model each dev3d frame is fitted with (all its hands are left).

Detects every frame of $HANDFIT_DATA/dev3d (``detect``), then decides the sides
as ``handfit fit`` does (:func:`handfit.fitting.pipeline.decide_sides`, with
FitOptions ``side_check_below`` and ``side_check_iters``, set by ``--set``) and
counts the frames that would be fitted with the right-hand model, before
(MediaPipe) and after.

    python bench/research/sides.py                                  # default threshold 0.95
    python bench/research/sides.py --set side_check_below=1         # fit both models for every hand
    python bench/research/sides.py --set side_check_iters=120
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.data("dev3d"))
    ap.add_argument("--limit", type=int, default=None, help="the first N frames")
    C.add_set_option(ap)
    args = ap.parse_args(argv)
    from handfit.fitting.pipeline import HandItem, decide_sides
    from handfit.fitting.resources import Resources
    from handfit.io import load_image

    opts = C.fit_options(args.set, {"device": "cpu", "dense.enabled": False})
    check = opts.side_check_below
    res = Resources()
    det = res.detector(opts.detect)
    items, labelled, frames = [], 0, 0
    for g in sorted(args.data.rglob("*.gt.json"))[: args.limit]:
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
    print(f"frames {frames}, labelled hands {labelled} (all left), detected {len(dets)} ({opts.detect})")
    print(f"right-hand model: MediaPipe {before}, after the side check {after}")
    print(f"checked (score < {check}): {checked}, changed: {sum(d.detector_side not in (None, d.side) for d in dets)}, "
          f"{secs:.1f} s for the check ({secs / max(checked, 1):.2f} s per checked hand)")


if __name__ == "__main__":
    main()
