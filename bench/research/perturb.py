"""How stable is the dense stage? Fit each dev3d hand twice: as is, and with the
dense stage's starting pose (the keypoint fit's) perturbed by Gaussian noise of
``--sigma`` radians per pose value. Prints the median and the maximum over hands
of the largest keypoint movement (mm) between the two final fits.

``--what start`` (default) perturbs only where the dense stage's optimisation
starts (``pipeline.finish(..., start=...)``): its evidence -- the detections and
the keypoint fit that its depth and anchor terms refer to -- stays as it was, so
this measures whether the stage ends in the same place from a nearby start.
``--what keypoint-fit`` perturbs the keypoint fit itself, start and reference
alike, so the movement also contains the change of evidence.
(``bench/ablation.py --perturb`` measures the first over a whole evaluation.)

    python bench/research/perturb.py --every 2 --sigma 0.01
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.data("dev3d"))
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--sigma", type=float, default=0.01, help="radians of noise per pose value")
    ap.add_argument("--what", choices=("start", "keypoint-fit"), default="start",
                    help="perturb the dense stage's start only, or the keypoint fit it refers to as well")
    C.add_set_option(ap)
    args = ap.parse_args(argv)

    from handfit.eval import open_dataset, select

    records = select(open_dataset(args.data), every=args.every, limit=args.limit)
    opts = C.fit_options(args.set)
    res = C.cached_resources()
    noise = {"rng": None}

    def start(fit, o):
        if noise["rng"] is None:
            return None
        shaken = C.shaken_pose(fit.params, args.sigma, noise["rng"])
        if args.what == "start":
            return shaken            # the reference stays the unperturbed keypoint fit
        fit.params.update(shaken)    # the keypoint fit itself: start and reference alike
        return None

    staged = C.StagedFit(res, start=start)
    moves = []
    for i, rec in enumerate(records):
        out = []
        for on in (False, True):
            noise["rng"] = np.random.default_rng(i) if on else None
            (r,) = staged([rec.image], intrinsics=[np.asarray(rec.K, float)], options=opts)
            out.append(r.hands[0].keypoints_3d if r.hands else None)
        if out[0] is None or out[1] is None:
            continue
        moves.append(float(np.linalg.norm(out[0] - out[1], axis=-1).max() * 1000))
        print(f"{rec.name}: largest keypoint movement {moves[-1]:.2f} mm", file=sys.stderr, flush=True)
    res.close()
    print(f"{len(moves)} hands, pose noise {args.sigma} rad ({args.what}): largest keypoint movement median "
          f"{statistics.median(moves):.2f} mm, max {max(moves):.2f} mm")


if __name__ == "__main__":
    main()
