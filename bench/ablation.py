"""Dense-stage ablations on dev3d: each setting's keypoint and default (dense) fit.

Runs ``handfit.eval.evaluate`` (what ``handfit eval DATA --compare`` runs) once
per setting in one process, with the detections and the multi-view landmarks
computed once and reused (MediaPipe is deterministic), and prints PA-MPJPE,
2D error and seconds per hand of the keypoint and the dense fit.

A setting is a ``;``-separated list of FitOptions paths, ``-`` for the defaults:

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/ablation.py --every 4 \\
        --settings "-" "dense.weights.depth=1" "dense.iters=60;dense.geometry_downsample=2"

The side decisions and keypoint fits are cached too, keyed by the options
they depend on, so settings that change only the dense stage run only it
(the keypoint variant's seconds are then those of its first run).

``--perturb SIGMA`` also fits every hand a second time with the dense
stage's starting pose perturbed by Gaussian noise of SIGMA radians per pose
value (its evidence, the detections and the keypoint fit that its depth term
refers to, unchanged; see bench/perturb.py) and reports the median and the
maximum over hands of the largest keypoint movement between the two fits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _overrides import _value as set_value  # noqa: E402
DEV3D = REPO.parent / "shared" / "data" / "dev3d"


def _value(v: str):
    """``true``/``false`` as booleans (e.g. ``dense.enabled``), else as ``--set`` reads it."""
    return v == "true" if v in ("true", "false") else set_value(v)


def parse_setting(s: str) -> dict:
    if s.strip() in ("", "-"):
        return {}
    return {k.strip(): _value(v.strip()) for k, v in (kv.split("=", 1) for kv in s.split(";") if kv.strip())}


def _items_key(items, *parts) -> str:
    h = hashlib.sha1()
    for it in items:
        d = it.detection
        h.update(np.asarray(it.K, np.float64).tobytes())
        h.update(np.asarray(d.keypoints, np.float64).tobytes())
        h.update(f"{d.side}{d.score}".encode())
        if it.rgb is not None:
            h.update(hashlib.sha1(it.rgb.tobytes()).digest())
    h.update(repr(parts).encode())
    return h.hexdigest()


def _cache_stages(pipeline):
    """Reuse side decisions and keypoint fits across settings that leave their options alone."""
    decide, keypoint_fit = pipeline.decide_sides, pipeline.keypoint_fit
    sides, fits = {}, {}

    def decide_cached(items, opts, res):
        key = _items_key(items, opts.keypoint, opts.side_check_below, opts.side_check_iters, opts.model, opts.detect)
        if key not in sides:
            sides[key] = decide(items, opts, res)
        return sides[key]

    def keypoint_cached(side, items, opts, res, progress=None):
        key = _items_key(items, side, opts.keypoint, opts.model, opts.views)
        if key not in fits:
            fits[key] = keypoint_fit(side, items, opts, res, progress)
        fit = fits[key]
        return fit.select(range(len(fit.items)))  # a copy: the dense stage updates its params

    pipeline.decide_sides, pipeline.keypoint_fit = decide_cached, keypoint_cached


def _cache_views():
    """Reuse each hand's multi-view landmarks (MediaPipe is deterministic) across settings."""
    from handfit.detect import multiview as mv

    views_cache, original = {}, mv.view_detections

    def cached(landmarks_fn, rgb, det, views, *a, **kw):
        key = (hashlib.sha1(rgb.tobytes()).hexdigest(), det.keypoints.round(6).tobytes(), det.side, views, a,
               tuple(sorted(kw.items())))
        if key not in views_cache:
            views_cache[key] = original(landmarks_fn, rgb, det, views, *a, **kw)
        return views_cache[key]

    mv.view_detections = cached


class CachedDetector:
    """The thorough detector of ``res``, each photo detected once across settings."""

    def __init__(self, res):
        self.res, self.found = res, {}

    def detect(self, rgb):
        key = hashlib.sha1(rgb.tobytes()).hexdigest()
        if key not in self.found:
            self.found[key] = self.res.detector("thorough").detect(rgb)
        return self.found[key]


def _perturb_starts(dense, noise):
    """While noise["sigma"] is set, shake the dense stage's starting pose (seeded by the hand's keypoints)."""
    original = dense.fit_dense

    def fit_dense(model, params, K_full, kp2d_full, *a, **kw):
        if noise["sigma"]:
            p = params["pose"]
            seed = int(hashlib.sha1(kp2d_full.detach().cpu().numpy().tobytes()).hexdigest()[:8], 16)
            eps = np.random.default_rng(seed).normal(0, noise["sigma"], tuple(p.shape))
            params["pose"] = p + torch.from_numpy(eps).to(p)
        return original(model, params, K_full, kp2d_full, *a, **kw)

    dense.fit_dense = fit_dense


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["-"])
    ap.add_argument("--data", type=Path, default=DEV3D)
    ap.add_argument("--every", type=int, default=1, help="every N-th image (1: all)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--variants", default="keypoint,dense")
    ap.add_argument("--json", type=Path, help="append one JSON line per setting here")
    ap.add_argument("--perturb", type=float, default=None, metavar="SIGMA",
                    help="also measure the dense stage's stability (radians of pose noise)")
    args = ap.parse_args(argv)

    from handfit.fitting import dense, pipeline
    from handfit.eval import evaluate, open_dataset, select
    from handfit.fitting.resources import Resources
    from handfit.options import FitOptions

    records = select(open_dataset(args.data), every=args.every, limit=args.limit)
    res = Resources()
    _cache_views()
    _cache_stages(pipeline)
    noise = {"sigma": None}
    _perturb_starts(dense, noise)
    detector = CachedDetector(res)

    variants = tuple(["mediapipe"] + args.variants.split(","))
    rows = []
    for s in args.settings:
        values = parse_setting(s)
        opts = FitOptions.from_values({"device": "cpu", **values})
        t = time.perf_counter()
        ev = evaluate(records, opts, variants, detector=detector, resources=res, warmup=False)
        row = {"setting": s, "seconds": round(time.perf_counter() - t, 1)}
        for v in variants[1:]:
            m = ev.summary[v]
            row[v] = {k: m[k] for k in ("pa_mpjpe_mm", "kp2d_px", "s_per_hand", "n")}
        if args.perturb and "dense" in variants:
            noise["sigma"] = args.perturb
            shaken = evaluate(records, opts, variants, detector=detector, resources=res, warmup=False)
            noise["sigma"] = None
            moves = [float(np.linalg.norm(a.preds["dense"]["kp3d"] - b.preds["dense"]["kp3d"], axis=-1).max() * 1000)
                     for a, b in zip(ev.hands, shaken.hands)
                     if a.preds.get("dense", {}).get("kp3d") is not None
                     and b.preds.get("dense", {}).get("kp3d") is not None]
            # The same with each fit's wrist moved to the origin: how much of the movement is
            # the whole hand's (its depth above all), how much its articulation and size.
            rel = [float(np.linalg.norm((a.preds["dense"]["kp3d"] - a.preds["dense"]["kp3d"][:1])
                                        - (b.preds["dense"]["kp3d"] - b.preds["dense"]["kp3d"][:1]), axis=-1).max()
                         * 1000)
                   for a, b in zip(ev.hands, shaken.hands)
                   if a.preds.get("dense", {}).get("kp3d") is not None
                   and b.preds.get("dense", {}).get("kp3d") is not None]
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
