"""2D keypoint accuracy on the labelled dev photos ($HANDFIT_DATA/dev).

For every labelled image (freihand, onehand10k, panoptic, tfjs_models/hands.jpg)
it fits the photo, matches each labelled hand to a fitted hand, and reports the
mean pixel error of MediaPipe's detected keypoints and of the fitted model's
keypoints against the labels (visible keypoints only).

    python bench/dev_keypoints.py                    # keypoint-only and dense fits
    python bench/dev_keypoints.py --modes keypoint   # keypoint-only
    python bench/dev_keypoints.py --limit 2 --set dense.weights.silhouette=0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

import _common as C


def match(gt_hand, hands):
    """The fitted hand whose detected keypoints are closest to the label."""
    kp = np.asarray(gt_hand["keypoints_2d"], float)
    best, best_d = None, np.inf
    for h in hands:
        d = np.linalg.norm(h.keypoints_2d_detected - kp, axis=-1).mean()
        if d < best_d:
            best, best_d = h, d
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.data("dev"))
    ap.add_argument("--limit", type=int, default=None, help="the first N labelled images")
    ap.add_argument("--modes", default="keypoint,dense", help="comma list of keypoint,dense")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, help="also write the per-image rows here")
    C.add_set_option(ap)
    args = ap.parse_args(argv)
    opts = C.fit_options(args.set, {"device": args.device, "max_hands": 2})
    if not args.data.is_dir():
        sys.exit(f"dev data not found at {args.data}")

    import handfit

    modes = args.modes.split(",")
    rows = []
    for s, img, gt in list(C.labelled_dev(args.data))[: args.limit]:
        row = {"set": s, "image": img.name}
        for mode in modes:
            t = time.perf_counter()
            res = handfit.fit(img, options=dataclasses.replace(
                opts, dense=dataclasses.replace(opts.dense, enabled=(mode == "dense"))))
            row[f"{mode}_seconds"] = time.perf_counter() - t
            det_e, fit_e, photo = [], [], []
            for gh in gt["hands"]:
                h = match(gh, res.hands)
                if h is None:
                    continue
                kp = np.asarray(gh["keypoints_2d"], float)
                vis = np.asarray(gh.get("visible", [1] * 21), bool)
                det_e.append(np.linalg.norm(h.keypoints_2d_detected - kp, axis=-1)[vis].mean())
                fit_e.append(np.linalg.norm(h.keypoints_2d_fitted - kp, axis=-1)[vis].mean())
                if "photometric_before" in h.metrics:
                    photo.append((h.metrics["photometric_before"], h.metrics["photometric_after"]))
            row["hands_labelled"] = len(gt["hands"])
            row["hands_matched"] = len(det_e)
            row["detected_px"] = float(np.mean(det_e)) if det_e else None
            row[f"{mode}_fitted_px"] = float(np.mean(fit_e)) if fit_e else None
            if photo:
                row["photometric_before"] = float(np.mean([a for a, _ in photo]))
                row["photometric_after"] = float(np.mean([b for _, b in photo]))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    print("\n| set | image | hands (labelled/matched) | detected px | " +
          " | ".join(f"{m} fit px" for m in modes) +
          (" | photometric before -> after |" if "dense" in modes else " |"))
    print("|---|---|---|---|" + "---|" * len(modes) + ("---|" if "dense" in modes else ""))
    for r in rows:
        cells = [r["set"], r["image"], f"{r['hands_labelled']}/{r['hands_matched']}", _f(r["detected_px"])]
        cells += [_f(r.get(f"{m}_fitted_px")) for m in modes]
        if "dense" in modes:
            pb, pa = r.get("photometric_before"), r.get("photometric_after")
            cells.append(f"{pb:.4f} -> {pa:.4f}" if pb is not None else "-")
        print("| " + " | ".join(cells) + " |")
    ok = [r for r in rows if r["detected_px"] is not None]
    det = np.mean([r["detected_px"] for r in ok])
    print(f"\nmean over {len(ok)} images with a matched hand: detected {det:.2f} px")
    for m in modes:
        fit = np.mean([r[f"{m}_fitted_px"] for r in ok])
        secs = np.mean([r[f"{m}_seconds"] for r in rows])
        print(f"  {m:8s} fitted {fit:.2f} px  (fitted/detected = {fit / det:.3f}), {secs:.1f} s per image")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _f(x):
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    main()
