"""3D effect of multi-view 2D evidence (FitOptions.views) on dev3d, keypoint fit only.

Runs ``handfit.eval.evaluate`` (what ``handfit eval DATA --no-appearance``
runs) once per setting, in one process: ``views`` N (0 = off) and the spread
weighting's sigma (handfit.fitting.hands.SPREAD_SIGMA; 0 = the fused keypoints
with every keypoint weighted alike). Detections and the views' landmarks are
cached across settings (MediaPipe is deterministic), so each setting costs its
keypoint fits. Prints PA-MPJPE, root-relative MPJPE and 2D px of the
``mediapipe`` variant (raw detections) and the keypoint fit.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/multiview_fit.py \\
        --settings 0:0,8:0,8:0.02 [--limit N] [--detect fast|thorough] [--batch-size B]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEV3D = REPO.parent / "shared" / "data" / "dev3d"
if not DEV3D.is_dir():
    DEV3D = Path("/work/shared/data/dev3d")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="0:0,8:0,8:0.02", help="comma list of VIEWS:SIGMA")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--detect", default="thorough")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=1, help="images fitted together (evaluate's batch_size)")
    args = ap.parse_args(argv)

    from handfit.detect import multiview as mv
    from handfit.eval import evaluate, open_dataset, select
    from handfit.fitting import hands as H
    from handfit.fitting.resources import Resources
    from handfit.options import FitOptions

    records = select(open_dataset(DEV3D), limit=args.limit)
    res = Resources()

    # cache the views' landmarks: key (image, detection keypoints, side) -> all 20 views' results
    cache, orig = {}, mv.view_detections

    def cached(landmarks_fn, rgb, det, views, agree=0.25, box_margin=0.1):
        key = (hashlib.sha1(rgb.tobytes()).hexdigest(), det.keypoints.round(6).tobytes(), det.side, agree)
        if key not in cache:
            cache[key] = orig(landmarks_fn, rgb, det, len(mv.VIEW_SET), agree, box_margin)
        return cache[key][:views]

    mv.view_detections = cached
    det = res.detector(args.detect, None)
    dcache = {}

    class CachedDetector:
        def detect(self, rgb):
            k = hashlib.sha1(rgb.tobytes()).hexdigest()
            if k not in dcache:
                dcache[k] = det.detect(rgb)
            return dcache[k]

    out = []
    for s in args.settings.split(","):
        views, sigma = s.split(":")
        views, sigma = int(views), float(sigma)
        H.SPREAD_SIGMA = sigma
        opts = FitOptions(appearance=False, detect=args.detect, views=views, device=args.device)
        t = time.perf_counter()
        ev = evaluate(records, opts, ("mediapipe", "keypoint"), detector=CachedDetector(), resources=res,
                      warmup=False, batch_size=args.batch_size)
        sec = time.perf_counter() - t
        m, k = ev.summary["mediapipe"], ev.summary["keypoint"]
        out.append((views, sigma, k["n"], m["pa_mpjpe_mm"], m["kp2d_px"], k["pa_mpjpe_mm"], k["rr_mpjpe_mm"],
                    k["kp2d_px"], k["s_per_hand"], sec))
        print(f"views {views} sigma {sigma}: keypoint PA {k['pa_mpjpe_mm']:.2f} mm, 2D {k['kp2d_px']:.2f} px "
              f"({sec:.0f} s)", file=sys.stderr, flush=True)
    res.close()
    print(f"\n{'views':>5}{'sigma':>7}{'hands':>7}{'MP PA mm':>10}{'MP 2D px':>10}{'kp PA mm':>10}{'kp RR mm':>10}"
          f"{'kp 2D px':>10}{'s/hand':>8}")
    for r in out:
        print(f"{r[0]:>5}{r[1]:>7.3f}{r[2]:>7}{r[3]:>10.2f}{r[4]:>10.2f}{r[5]:>10.2f}{r[6]:>10.2f}{r[7]:>10.2f}"
              f"{r[8]:>8.2f}")


if __name__ == "__main__":
    main()
