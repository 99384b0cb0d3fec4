"""The gradient scales Adam sees in the dense stage: for each of its geometry runs
(the coarse phase, then the fine one), sqrt of Adam's bias-corrected second moment
(the size its steps are divided by) per parameter group at the run's end,
as percentiles over the group's values and the hands. Adam's ``eps``
(DenseStage.adam_eps) is meant to sit near the scale of the flat directions.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/adam_scales.py --every 13 --limit 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEV3D = REPO.parent / "shared" / "data" / "dev3d"
if not DEV3D.is_dir():
    DEV3D = Path("/work/shared/data/dev3d")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEV3D)
    ap.add_argument("--every", type=int, default=13)
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="FitOptions path=value")
    args = ap.parse_args(argv)

    import handfit
    from handfit.eval import open_dataset, select
    from handfit.fitting import dense
    from handfit.fitting.resources import Resources
    from handfit.options import FitOptions

    sys.path.insert(0, str(REPO / "bench"))
    from ablation import parse_setting

    opts = FitOptions.from_values({"device": "cpu", **parse_setting(";".join(args.set))})
    made = []  # the Adam optimisers of the dense stage's geometry runs, in order
    Adam = torch.optim.Adam

    class Recorded(Adam):
        def __init__(self, groups, *a, **kw):
            super().__init__(groups, *a, **kw)
            if recording["names"]:
                made.append((self, recording["names"]))

    recording = {"names": None}
    torch.optim.Adam = Recorded
    run = dense.run_adam

    def geometry_run(params, lrs, *a, **kw):  # the texture phase optimises no pose: not recorded
        recording["names"] = list(lrs) if "pose" in lrs else None
        try:
            return run(params, lrs, *a, **kw)
        finally:
            recording["names"] = None

    dense.run_adam = geometry_run
    res = Resources()
    scales = {}  # (run index, group name) -> list of arrays
    for rec in select(open_dataset(args.data), every=args.every, limit=args.limit):
        made.clear()
        handfit.fit_batch([rec.image], intrinsics=[np.asarray(rec.K, float)], options=opts, resources=res)
        for i, (opt, names) in enumerate(made):
            for name, group in zip(names, opt.param_groups):
                (p,) = group["params"]
                st = opt.state[p]
                t = float(st["step"])
                v_hat = st["exp_avg_sq"] / (1 - group["betas"][1] ** t)
                key = (i, name)
                scales.setdefault(key, []).append(v_hat.sqrt().flatten().numpy())
        print(f"{rec.name}: {len(made)} geometry runs", file=sys.stderr, flush=True)
    res.close()
    print("| run | tensor | p10 | p50 | p90 | max |")
    print("|---|---|---|---|---|---|")
    for (i, name), vs in sorted(scales.items()):
        v = np.concatenate(vs)
        q = np.percentile(v, [10, 50, 90])
        print(f"| {i} | {name} | {q[0]:.2e} | {q[1]:.2e} | {q[2]:.2e} | {v.max():.2e} |")


if __name__ == "__main__":
    main()
