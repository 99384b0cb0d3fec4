"""How good is MediaPipe's relative depth, and how noisy is the truth? On a sequence dataset's runs.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/research/seq_depth_evidence.py --cache /tmp/seqcache.pkl

The evidence comes from the cache ``bench/research/seq_temporal.py`` also reads (made on the first
call, :func:`_common.load_runs`). Every run is
fitted as one track (``pipeline.fit_track``, keypoint stage) twice: without the keypoint stage's
depth term (``keypoint.weights.depth=0``) and with the defaults. Printed:

1. Each keypoint's depth relative to the wrist against the truth's (mean absolute error, mm, every
   keypoint but the wrist): MediaPipe's ``keypoints_z`` (in x pixels, so times the fitted wrist
   depth over f), each fit's, and how correlated MediaPipe's errors are with the first fit's.
2. The truth's own noise: the wrist and the four knuckles (keypoints 0, 5, 9, 13, 17) move
   almost as one rigid body, so a rigid template is fitted to them in every frame of a run and
   the part that is not rigid is reported (mean distance, mm) with its acceleration relative to
   the wrist (mm/frame², as ``accel_mm`` measures it, over the matched frames taken as
   consecutive), for the truth and for the fit with the defaults.
   What the truth has there is label noise that no prediction can follow: a floor under
   ``accel_mm``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

PALM = [0, 5, 9, 13, 17]


def rigid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (T,N,3) moved rigidly onto b (T,N,3), frame by frame, in the least-squares sense."""
    from handfit.geometry import kabsch

    a, b = torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b))
    ca, cb = a.mean(-2, keepdim=True), b.mean(-2, keepdim=True)
    return ((a - ca) @ kabsch(a, b).transpose(-1, -2) + cb).numpy()


def non_rigid(x: np.ndarray) -> tuple:
    """x: (T,5,3) mm, one run's palm points. -> (mean non-rigid distance mm, [accel of each middle frame])"""
    tmpl = x.mean(0)
    for _ in range(3):   # the template: the mean of the frames aligned to it
        tmpl = rigid(x, np.broadcast_to(tmpl, x.shape)).mean(0)
    res = x - rigid(np.broadcast_to(tmpl, x.shape), x)
    rel = res - res[:, :1]
    acc = rel[2:] - 2 * rel[1:-1] + rel[:-2]
    return float(np.linalg.norm(res, axis=-1).mean()), list(np.linalg.norm(acc, axis=-1)[:, 1:].mean(-1))


def main(argv=None) -> int:
    from handfit.fitting import pipeline
    from handfit.fitting.resources import Resources
    from handfit.options import FitOptions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.data("dev3d_seq"))
    ap.add_argument("--cache", type=Path, required=True)
    args = ap.parse_args(argv)
    fits = {"no depth term": FitOptions.from_values({"dense.enabled": False, "keypoint.weights.depth": 0.0}),
            "defaults": FitOptions.from_values({"dense.enabled": False})}   # both: the track's keypoint stage
    with Resources() as res:
        runs = C.load_runs(args.cache, args.data, res, fits["defaults"])
        if runs is None:
            return 1
        preds, fitted = {}, {}
        for name, o in fits.items():
            fitted[name] = [pipeline.fit_track(items, o, res) for *_, items in runs]
            preds[name] = [np.stack([h.keypoints_3d for h in pipeline.assemble(f, 1)]) for f in fitted[name]]
    truth, mp, fit_z = [], [], {k: [] for k in fits}
    for i, (_, gt, matched, _) in enumerate(runs):
        g = gt[matched]
        items = fitted["no depth term"][i].items   # the landmarks fitted (a frame may have had its side's again)
        truth.append(g[:, 1:, 2] - g[:, :1, 2])
        p0 = preds["no depth term"][i]
        z = np.stack([np.asarray(it.detection.keypoints_z, float) for it in items])
        f = np.array([np.asarray(it.K, float)[0, 0] for it in items])
        mp.append((z[:, 1:] - z[:, :1]) / f[:, None] * p0[:, :1, 2])
        for k in fits:
            p = preds[k][i]
            fit_z[k].append(p[:, 1:, 2] - p[:, :1, 2])
    t = np.concatenate(truth)
    m = np.concatenate(mp)
    print(f"{len(runs)} runs, {len(t)} frames\n")
    print("| root-relative depth of | mean abs error mm | correlation with the truth |")
    print("|---|---|---|")
    rows = {"MediaPipe keypoints_z": m, **{f"fit, {k}": np.concatenate(v) for k, v in fit_z.items()}}
    for k, v in rows.items():
        print(f"| {k} | {np.abs(v - t).mean() * 1000:.2f} | {np.corrcoef(v.ravel(), t.ravel())[0, 1]:.3f} |")
    e0 = rows["fit, no depth term"] - t
    print(f"\ncorrelation of MediaPipe's depth errors with the fit's (no depth term): "
          f"{np.corrcoef((m - t).ravel(), e0.ravel())[0, 1]:.2f}\n")
    print("| palm (keypoints 0, 5, 9, 13, 17) of | not rigid, mean mm | its accel mm/frame² |")
    print("|---|---|---|")
    for label, get in (("the truth", lambda i: runs[i][1][runs[i][2]]),
                       ("the fit (defaults, keypoint stage)", lambda i: preds["defaults"][i])):
        dist, acc = [], []
        for i in range(len(runs)):
            d, a = non_rigid(get(i)[:, PALM] * 1000.0)
            dist.append(d)
            acc.extend(a)
        print(f"| {label} | {np.mean(dist):.2f} | {np.mean(acc):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
