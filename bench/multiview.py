"""Multi-view 2D evidence (handfit.detect.multiview) against the labels.

For every labelled hand of the dev photos (bench/dev_keypoints.py's sets) and
of dev3d, the hand is detected once (``fast``: MediaPipe's full pass, the
"single" column), matched to its label (nearest mean keypoint), and the
landmark model is run on the 20 views of handfit.detect.multiview.VIEW_SET of
its crop. Each config fuses the first N views (as ``FitOptions.views = N``
does). Prints per set and config: hands, mean 2D px of the single view and of
the fused keypoints (hands the fusion left unchanged count with their single
error), how many hands were refined, the mean views kept, the landmark time per
hand, and on dev3d also the PA-MPJPE (mm) of the world landmarks, single vs fused.
Last, how the per-keypoint spread ranks the fused keypoints' errors.

    OMP_NUM_THREADS=1 python bench/multiview.py [--configs 1,2,4,6,8,12,20] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import _common as C


def hands_of(name: str, limit: int | None):
    """(set, image path, K or None, kp2d (21,2), visible (21,), kp3d (21,3) or None) per labelled hand."""
    if name == "dev":
        for s, img, gt in list(C.labelled_dev())[:limit]:
            for h in gt["hands"]:
                yield "dev/" + s, img, None, np.asarray(h["keypoints_2d"], float), \
                    np.asarray(h.get("visible", [1] * 21), bool), None
    else:
        from handfit.eval.datasets import read_dev3d, select

        for rec in select(read_dev3d(C.data("dev3d")), limit=limit):
            for h in rec.hands:
                vis = h.visible if getattr(h, "visible", None) is not None else np.ones(21, bool)
                yield "dev3d", Path(rec.image), rec.K, np.asarray(h.keypoints_2d, float), np.asarray(vis, bool), \
                    np.asarray(h.keypoints_3d, float)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="1,2,4,6,8,12,20")
    ap.add_argument("--sets", default="dev,dev3d")
    ap.add_argument("--limit", type=int, default=None, help="the first N images of each set")
    args = ap.parse_args(argv)
    configs = [int(c) for c in args.configs.split(",")]
    nmax = max(configs)

    from handfit.detect import Detector
    from handfit.detect import multiview as mv
    from handfit.eval.metrics import pa_mpjpe
    from handfit.io.image import load_image

    det = Detector(mode="fast")
    times = []

    def timed(img):
        t = time.perf_counter()
        out = det.landmarks(img)
        times[-1].append(time.perf_counter() - t)
        return out

    rows = []  # per hand: set, single err, {N: fused err}, {N: views}, ms per view list, world errs, spread/err
    for set_name in args.sets.split(","):
        for s, img, K, kp, vis, kp3d in hands_of(set_name, args.limit):
            rgb = load_image(img).rgb
            dets = det.detect(rgb)
            if not dets:
                rows.append({"set": s, "missed": True})
                continue
            d = min(dets, key=lambda d: np.linalg.norm(d.keypoints - kp, axis=1).mean())
            err = lambda k: float(np.linalg.norm(k - kp, axis=1)[vis].mean())  # noqa: E731
            if err(d.keypoints) > 0.5 * max(np.ptp(kp, axis=0)):
                rows.append({"set": s, "missed": True})
                continue
            times.append([])
            found = mv.view_detections(timed, rgb, d, nmax)
            row = {"set": s, "single": err(d.keypoints), "fused": {}, "views": {}, "ms": times[-1],
                   "world": {}, "spread": {}}
            if kp3d is not None:
                row["world_single"] = float(pa_mpjpe(d.world, kp3d)) * 1000
            for n in configs:
                f = mv.combine(d, found[:n])
                row["fused"][n] = err(f.keypoints)
                row["views"][n] = f.views
                if kp3d is not None:
                    row["world"][n] = float(pa_mpjpe(f.world, kp3d)) * 1000
                if f.keypoint_spread is not None:
                    size = float(np.ptp(f.keypoints, axis=0).max())
                    row["spread"][n] = (f.keypoint_spread[vis] / size, np.linalg.norm(f.keypoints - kp, axis=1)[vis])
            rows.append(row)
            print(f"{s} {img.name}: single {row['single']:.2f} px, fused "
                  + " ".join(f"{n}:{row['fused'][n]:.2f}" for n in configs), file=sys.stderr, flush=True)
    det.close()

    print(f"\n{'set':<16}{'views':>6}{'hands':>7}{'single px':>11}{'fused px':>10}{'refined':>9}{'kept':>6}"
          f"{'ms/hand':>9}{'world1 mm':>11}{'worldN mm':>11}")
    groups = sorted({r["set"] for r in rows})
    groups = groups + (["all dev"] if any(g.startswith("dev/") for g in groups) else [])
    for g in groups:
        rs = [r for r in rows if (r["set"] == g or (g == "all dev" and r["set"].startswith("dev/")))
              and not r.get("missed")]
        missed = sum(1 for r in rows if r["set"] == g and r.get("missed"))
        if not rs:
            continue
        for n in configs:
            single = np.mean([r["single"] for r in rs])
            fused = np.mean([r["fused"][n] for r in rs])
            refined = sum(r["views"][n] > 0 for r in rs)
            kept = np.mean([r["views"][n] for r in rs if r["views"][n] > 0]) if refined else 0
            ms = 1000 * np.mean([sum(r["ms"][:n]) for r in rs])
            w1 = np.mean([r["world_single"] for r in rs]) if "world_single" in rs[0] else float("nan")
            wn = np.mean([r["world"][n] for r in rs]) if "world_single" in rs[0] else float("nan")
            print(f"{g:<16}{n:>6}{len(rs):>7}{single:>11.2f}{fused:>10.2f}{refined:>9}{kept:>6.1f}{ms:>9.0f}"
                  f"{w1:>11.2f}{wn:>11.2f}" + (f"  ({missed} missed)" if missed and n == configs[0] else ""))
    # does the spread rank the errors? fused error of keypoints by spread tercile, per config
    print("\nfused 2D error (px) of keypoints by spread tercile")
    for n in configs:
        pairs = [r["spread"][n] for r in rows if not r.get("missed") and n in r["spread"]]
        if not pairs:
            continue
        sp = np.concatenate([p[0] for p in pairs])
        er = np.concatenate([p[1] for p in pairs])
        q = np.quantile(sp, [1 / 3, 2 / 3])
        t = [er[sp <= q[0]].mean(), er[(sp > q[0]) & (sp <= q[1])].mean(), er[sp > q[1]].mean()]
        rho = np.corrcoef(np.argsort(np.argsort(sp)), np.argsort(np.argsort(er)))[0, 1]
        print(f"  views {n:>2}: low {t[0]:.2f}  mid {t[1]:.2f}  high {t[2]:.2f}   (spread terciles "
              f"{q[0]:.4f} / {q[1]:.4f}; Spearman {rho:.2f})")


if __name__ == "__main__":
    main()
