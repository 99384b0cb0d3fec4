"""How stable is the dense stage? Fit each dev3d hand twice: as is, and with the
dense stage's starting pose (the keypoint fit's) perturbed by Gaussian noise of
``--sigma`` radians per pose value. Prints the median and the maximum over hands
of the largest keypoint movement (mm) between the two final fits.

``--what start`` (default) perturbs only where the dense stage's optimisation
starts: its evidence -- the detections and the keypoint fit that its depth and
anchor terms refer to -- stays as it was, so this measures whether the stage
ends in the same place from a nearby start. ``--what keypoint-fit`` perturbs
the keypoint fit itself, start and reference alike, so the movement also
contains the change of evidence.

    python bench/perturb.py --every 2 --sigma 0.01
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEV3D = REPO.parent / "shared" / "data" / "dev3d"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEV3D)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--sigma", type=float, default=0.01, help="radians of noise per pose value")
    ap.add_argument("--what", choices=("start", "keypoint-fit"), default="start",
                    help="perturb the dense stage's start only, or the keypoint fit it refers to as well")
    args = ap.parse_args(argv)

    import handfit
    from handfit.eval import open_dataset, select
    from handfit.fitting import dense, pipeline
    from handfit.fitting.resources import Resources

    records = select(open_dataset(args.data), every=args.every, limit=args.limit)
    res = Resources()
    noise = {"on": False, "gen": None}

    def shake(params):
        if noise["on"]:
            p = params["pose"]
            params["pose"] = p + torch.from_numpy(noise["gen"].normal(0, args.sigma, tuple(p.shape))).to(p)

    if args.what == "start":
        original = dense.fit_dense

        def perturbed(model, params, *a, **kw):
            shake(params)  # the reference (kw["reference"]) is the unperturbed keypoint fit
            return original(model, params, *a, **kw)

        dense.fit_dense = perturbed
    else:
        original = pipeline.dense_fit

        def perturbed(fit, opts, r, progress=None):
            shake(fit.params)
            return original(fit, opts, r, progress)

        pipeline.dense_fit = perturbed
    moves = []
    for i, rec in enumerate(records):
        out = []
        for on in (False, True):
            noise.update(on=on, gen=np.random.default_rng(i))
            (r,) = handfit.fit_batch([rec.image], intrinsics=[np.asarray(rec.K, float)], resources=res)
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
