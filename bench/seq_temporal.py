"""The track fit's temporal terms at several settings, on a sequence dataset's runs, from cached evidence.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/seq_temporal.py --cache /tmp/seqcache.pkl \
        --try "" "JOINT_WEIGHT=0" [--dense] [--runs run02] [--options "dense.weights.depth=0"]

The first call detects every frame of every run (default ``../shared/data/dev3d_seq``) once,
matches the detections to the labels and refines them from ``opts.views`` views as
``handfit eval --sequence`` does (:func:`handfit.eval.sequence.fit_run`), and pickles that
evidence to ``--cache``; later calls read it back, so each setting costs only its fits.
Each ``--try`` is a space-separated list of ``NAME=VALUE`` module constants of
``handfit.fitting.temporal`` set for that setting ("" = the defaults). For each setting, every run
is fitted as one track (``pipeline.fit_track``; with ``--dense`` also ``pipeline.finish_track``)
and the script prints PA-MPJPE (mm) and accel_mm (mm/frame², ``handfit.eval.metrics.accel_errors``
on the root-relative keypoints, frames with both neighbours fitted), pooled over the runs
exactly as ``handfit eval --sequence`` pools them.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "dev3d_seq"


def build_cache(data: Path, res, opts) -> list:
    """[(run, gt (F,21,3) metres, matched (F,) bool, items of the matched frames)] per run (hand 0)."""
    from handfit.eval.datasets import read_runs
    from handfit.eval.run import detect_record
    from handfit.fitting.pipeline import HandItem, refine_evidence

    detector = res.detector(opts.detect, opts.max_hands)
    out = []
    for name, frames in read_runs(data):
        gt, matched, items = [], [], []
        for rec in frames:
            evs, photo, pairs = detect_record(rec, detector)
            gt.append(evs[0].gt3d)
            pair = [d for e, d in pairs if e.hand == 0]
            matched.append(bool(pair))
            if pair:
                items.append(HandItem(rec.K, pair[0], photo.rgb))
        out.append((name, np.stack(gt), np.array(matched), refine_evidence(items, opts, res)))
        print(f"cached {name}: {len(items)}/{len(frames)} frames", file=sys.stderr, flush=True)
    return out


def load_runs(cache: Path, data: Path, res, opts) -> list | None:
    """The runs' evidence from ``cache``, or built from ``data`` (:func:`build_cache`) and
    written there; None (with a message) when neither exists."""
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    if not data.is_dir():
        print(f"no data at {data}", file=sys.stderr)
        return None
    runs = build_cache(data, res, opts)
    cache.write_bytes(pickle.dumps(runs))
    return runs


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


def main(argv=None) -> int:
    from handfit.fitting import pipeline, temporal
    from handfit.fitting.resources import Resources
    from handfit.options import FitOptions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--runs", nargs="*", default=None, help="run names (or their start, e.g. run02); default all")
    ap.add_argument("--try", dest="tries", nargs="+", default=[""], help='settings, e.g. "JOINT_WEIGHT=0"')
    ap.add_argument("--dense", action="store_true", help="also the dense stage (finish_track)")
    ap.add_argument("--dense-cache", type=Path, default=None,
                    help="with --dense: where the first setting's dense results (before settle_track) are "
                         "pickled; when it exists, every setting only settles those (no keypoint stage)")
    ap.add_argument("--options", default="-",
                    help='FitOptions paths for every setting, ";"-separated as bench/ablation.py takes them, '
                         'e.g. "dense.weights.depth=0;dense.weights.anchor=0" ("-": the defaults)')
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "bench"))
    from ablation import parse_setting

    opts = FitOptions.from_values({"dense.enabled": bool(args.dense), **parse_setting(args.options)})
    with Resources() as res:
        runs = load_runs(args.cache, args.data, res, opts)
        if runs is None:
            return 1
        runs = [r for r in runs if args.runs is None or any(r[0].split("/")[-1].startswith(n) for n in args.runs)]
        defaults = {k: getattr(temporal, k) for k in dir(temporal) if k.isupper()}
        dense_cache = None
        if args.dense_cache is not None and args.dense_cache.exists():
            dense_cache = pickle.loads(args.dense_cache.read_bytes())
            dense_cache = [dense_cache[r[0]] for r in runs]
        saved = []   # per run, in order: finish_track settles each run once
        settle = pipeline.settle

        def recording_settle(fit, parts, *rest):
            import torch

            saved.append((fit.side, {k: torch.cat([p.params[k] for p in parts]) for k in fit.params},
                                   fit.batch.K, fit.batch.scale))
            return settle(fit, parts, *rest)

        pipeline.settle = recording_settle
        print(f"runs: {len(runs)}, frames: {sum(len(r[3]) for r in runs)}")
        print("| setting | sequence_keypoint PA / accel | sequence_dense PA / accel | s |")
        print("|---|---|---|---|")
        for setting in args.tries:
            for k, v in defaults.items():
                setattr(temporal, k, v)
            for kv in setting.split():
                k, v = kv.split("=")
                if k not in defaults:
                    raise SystemExit(f"unknown constant {k}; known: {sorted(defaults)}")
                setattr(temporal, k, type(defaults[k])(float(v)) if not isinstance(defaults[k], bool) else v == "1")
            t0 = time.perf_counter()
            kp, dn = [], []
            if dense_cache is not None:
                for side, params, K, scale in dense_cache:
                    model = res.model(opts.model, side, opts.mano, K.device, K.dtype)
                    params = dict(params)
                    temporal.settle_track(model, params, K, scale, opts.keypoint)
                    dn.append(model(**params).keypoints.detach().double().cpu().numpy())
                d_pa, d_acc = score(runs, dn)
                print(f"| {setting or 'defaults'} | - | {d_pa:.2f} / {d_acc:.2f} | {time.perf_counter() - t0:.0f} |",
                      flush=True)
                continue
            for _, _, _, items in runs:
                fit = pipeline.fit_track(items, opts, res)
                kp.append(np.stack([h.keypoints_3d for h in pipeline.assemble(fit, texture_size=1)]))
                if args.dense:
                    dn.append(np.stack([h.keypoints_3d for h in pipeline.finish_track(fit, opts, res)]))
            if args.dense_cache is not None and not args.dense_cache.exists():
                args.dense_cache.write_bytes(pickle.dumps({r[0]: v for r, v in zip(runs, saved)}))
            k_pa, k_acc = score(runs, kp)
            d = "%.2f / %.2f" % score(runs, dn) if args.dense else "-"
            print(f"| {setting or 'defaults'} | {k_pa:.2f} / {k_acc:.2f} | {d} | {time.perf_counter() - t0:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
