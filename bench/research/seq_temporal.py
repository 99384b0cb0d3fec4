"""The track fit's temporal terms at several settings, on a sequence dataset's runs, from cached evidence.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/research/seq_temporal.py --cache /tmp/seqcache.pkl \\
        --try - "track.refine_joint=0.5" [--dense] [--runs run02] [--set dense.weights.depth=0]

The first call detects every frame of every run (default ``$HANDFIT_DATA/dev3d_seq``) once,
matches the detections to the labels and refines them from ``opts.views`` views as
``handfit eval --sequence`` does, and pickles that evidence to ``--cache``; later calls read
it back, so each setting costs only its fits. Each ``--try`` is a space-separated list of
FitOptions ``PATH=VALUE`` (the track's are ``track.*``: :class:`handfit.options.TrackStage`;
``-`` = the defaults); ``--set`` applies to every setting. For each setting, every run is
fitted as one track (``pipeline.fit_track``; with ``--dense`` also the dense stage and the
settling, as ``pipeline.finish_track`` runs them) and the script prints PA-MPJPE (mm) and
accel_mm (mm/frame², ``handfit.eval.metrics.accel_errors`` on the root-relative keypoints,
frames with both neighbours fitted), pooled over the runs exactly as ``handfit eval
--sequence`` pools them.

``--dense-cache PATH``: the first setting's dense results (before the settling) are pickled
there; when it exists, every setting only settles those (``temporal.settle_track``), which
is how the ``track.settle_*`` and ``track.sigma_*`` settings are compared cheaply.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402


def score(runs: list, preds: list) -> tuple:
    """Pooled (PA-MPJPE mm, accel mm/frame²) of preds[i] ((n_i,21,3) metres of run i's matched frames)."""
    from handfit.eval import metrics as M

    pa, acc = [], []
    for (_, gt, matched, _), p in zip(runs, preds):
        full = np.zeros(gt.shape)
        full[matched] = p
        pa.extend(M.pa_mpjpe(p * 1000.0, gt[matched] * 1000.0))
        a = M.accel_errors(full * 1000.0, gt * 1000.0, matched)
        acc.extend(a[np.isfinite(a)])
    return float(np.mean(pa)), float(np.mean(acc))


def dense_track(fit, opts, res) -> tuple:
    """``pipeline.finish_track`` from its public steps, keeping what the settling starts from.
    -> (T HandResult, (side, params before the settling, the track's HandBatch))"""
    import torch

    from handfit.fitting.pipeline import assemble, dense_fit, observe_track, settle, track_texture

    T, n = len(fit.items), opts.track.chunk
    chunks = [list(range(i, min(T, i + n))) for i in range(0, T, n)]
    acc = None
    for idx in chunks:
        acc = observe_track(fit.select(idx), opts, res, acc)
    texture = track_texture(acc, opts, res)
    parts = [dense_fit(fit.select(idx), opts, res, texture=texture) for idx in chunks]
    before = {k: torch.cat([p.params[k] for p in parts]) for k in fit.params}
    settle(fit, parts, opts)
    return [h for p in parts for h in assemble(p, opts.texture_size)], (fit.side, before, fit.batch)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.data("dev3d_seq"))
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--runs", nargs="*", default=None, help="run names (or their start, e.g. run02); default all")
    ap.add_argument("--try", dest="tries", nargs="+", action="extend", default=None, metavar="'PATH=VALUE ...'",
                    help='settings to compare, e.g. "track.refine_joint=0.5 track.sigma_depth=0.01" ("-": defaults)')
    C.add_set_option(ap)
    ap.add_argument("--dense", action="store_true", help="also the dense stage and the settling (finish_track)")
    ap.add_argument("--dense-cache", type=Path, default=None,
                    help="with --dense: where the first setting's dense results (before the settling) are "
                         "pickled; when it exists, every setting only settles those (no keypoint stage)")
    args = ap.parse_args(argv)
    tries = args.tries or ["-"]

    from handfit.fitting import pipeline
    from handfit.fitting.resources import Resources
    from handfit.fitting.temporal import settle_track

    def options(s):
        return C.fit_options(args.set + [s], {"dense.enabled": bool(args.dense)})

    with Resources() as res:
        runs = C.load_runs(args.cache, args.data, res, options("-"))
        if runs is None:
            return 1
        runs = C.pick_runs(runs, args.runs)
        dense_cache = None
        if args.dense_cache is not None and args.dense_cache.exists():
            dense_cache = pickle.loads(args.dense_cache.read_bytes())
            dense_cache = [dense_cache[r[0]] for r in runs]
        print(f"runs: {len(runs)}, frames: {sum(len(r[3]) for r in runs)}")
        print("| setting | sequence_keypoint PA / accel | sequence_dense PA / accel | s |")
        print("|---|---|---|---|")
        for setting in tries:
            opts = options(setting)
            t0 = time.perf_counter()
            kp, dn, saved = [], [], []
            if dense_cache is not None:
                for side, params, batch in dense_cache:
                    model = res.model(opts.model, side, opts.mano, batch.K.device, batch.K.dtype)
                    params = dict(params)
                    settle_track(model, params, batch, opts.keypoint, opts.track)
                    dn.append(model(**params).keypoints.detach().double().cpu().numpy())
                d_pa, d_acc = score(runs, dn)
                print(f"| {C.describe([setting])} | - | {d_pa:.2f} / {d_acc:.2f} | {time.perf_counter() - t0:.0f} |",
                      flush=True)
                continue
            for _, _, _, items in runs:
                fit = pipeline.fit_track(items, opts, res)
                kp.append(np.stack([h.keypoints_3d for h in pipeline.assemble(fit, texture_size=1)]))
                if args.dense:
                    hands, before = dense_track(fit, opts, res)
                    dn.append(np.stack([h.keypoints_3d for h in hands]))
                    saved.append(before)
            if args.dense_cache is not None and not args.dense_cache.exists() and saved:
                args.dense_cache.write_bytes(pickle.dumps({r[0]: v for r, v in zip(runs, saved)}))
            k_pa, k_acc = score(runs, kp)
            d = "%.2f / %.2f" % score(runs, dn) if args.dense else "-"
            print(f"| {C.describe([setting])} | {k_pa:.2f} / {k_acc:.2f} | {d} | {time.perf_counter() - t0:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
