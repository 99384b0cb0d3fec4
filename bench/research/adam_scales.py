"""The gradient scales Adam sees in the dense stage: sqrt of Adam's bias-corrected second
moment (the size its steps are divided by) per optimised tensor at the end of the geometry
phase, as percentiles over the tensor's values and the hands; once with ``dense.fine_iters=0``
(the coarse iterations alone) and once as set (coarse, then fine continuing the same Adam).
Adam's ``eps`` (DenseStage.adam_eps*) is meant to sit near the scale of the flat directions.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/research/adam_scales.py --every 13 --limit 4

The dense stage is called here as ``pipeline.dense_fit`` calls it (:func:`handfit.fitting.dense.fit_dense`,
whose report carries Adam's state), after the pipeline's own keypoint stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402


def geometry_state(fit, opts, res) -> dict:
    """Adam's state at the end of the dense stage's geometry phase for one side's hands."""
    from handfit.fitting.dense import fit_dense

    model, batch, params = fit.model, fit.batch, dict(fit.params)
    device, dtype = batch.K.device, batch.K.dtype
    with torch.no_grad():
        kp3d = model(**params).keypoints
    reference = {"global_orient": params["global_orient"], "pose": params["pose"], "keypoints": kp3d}
    report, _ = fit_dense(model, params, batch, [it.rgb for it in fit.items], opts,
                          texture_prior=res.texture_prior(opts.texture_prior, opts.model, device, dtype),
                          context=res.render_context(device, opts.renderer), reference=reference)
    return report.adam_state


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.data("dev3d"))
    ap.add_argument("--every", type=int, default=13)
    ap.add_argument("--limit", type=int, default=4)
    C.add_set_option(ap)
    args = ap.parse_args(argv)

    from handfit.eval import open_dataset, select
    from handfit.fitting.pipeline import HandItem
    from handfit.io import load_image

    runs = {"coarse only": C.fit_options(args.set + ["dense.fine_iters=0"], {"device": "cpu"}),
            "coarse + fine": C.fit_options(args.set, {"device": "cpu"})}
    res = C.cached_resources()
    staged = C.StagedFit(res)
    scales = {}  # (run, tensor name) -> list of arrays
    for rec in select(open_dataset(args.data), every=args.every, limit=args.limit):
        rgb = load_image(rec.image).rgb
        for run, opts in runs.items():
            dets = res.detector(opts.detect).detect(rgb)[: opts.max_hands]
            items = staged.evidence([HandItem(np.asarray(rec.K, float), d, rgb) for d in dets], opts)
            for side in ("right", "left"):
                mine = [it for it in items if it.detection.side == side]
                if not mine:
                    continue
                for name, st in geometry_state(staged.keypoint(side, mine, opts), opts, res).items():
                    v_hat = st["exp_avg_sq"] / (1 - 0.999 ** float(st["step"]))   # Adam's default betas
                    scales.setdefault((run, name), []).append(v_hat.sqrt().flatten().numpy())
        print(f"{rec.name}: {len(dets)} hands", file=sys.stderr, flush=True)
    res.close()
    print("| run | tensor | p10 | p50 | p90 | max |")
    print("|---|---|---|---|---|---|")
    for (run, name), vs in sorted(scales.items(), key=lambda kv: (list(runs).index(kv[0][0]), kv[0][1])):
        v = np.concatenate(vs)
        q = np.percentile(v, [10, 50, 90])
        print(f"| {run} | {name} | {q[0]:.2e} | {q[1]:.2e} | {q[2]:.2e} | {v.max():.2e} |")


if __name__ == "__main__":
    main()
