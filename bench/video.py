"""Video fitting: jitter (mean keypoint acceleration) with and without temporal
smoothing, and frames per second.

    python bench/video.py [VIDEO] [--every 5] [--end N] [--weights 0,1]

Detects the chosen frames once, then fits the tracks once per smoothing
weight (0 = no smoothing term). Jitter is the mean norm of the second
difference of the fitted keypoints between consecutive chosen frames: 3D in
millimetres (camera frame), 2D in pixels; the detector's own 2D jitter is the
reference. frames/s counts read + detect + fit (not writing the outputs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT = REPO.parent / "shared" / "data" / "dev" / "tfjs_models" / "asl_hand.25fps.mp4"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", nargs="?", default=str(DEFAULT))
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--end", type=int, default=None)
    ap.add_argument("--weights", default="0,1", help="smoothing weights to compare (0 = off)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--detect", default="thorough", choices=("fast", "thorough"),
                    help="detection cascade (handfit batch uses --detect, default thorough, for videos too)")
    args = ap.parse_args()

    from handfit.batch.threads import configure_threads

    threads = configure_threads(args.threads)
    from handfit.api import FitOptions
    from handfit.batch.records import VideoOptions
    from handfit.batch.video import fit_video_frames, track_metrics, track_outputs
    from handfit.fitting.resources import Resources
    from handfit.io.media import read_frames

    opts = FitOptions(device="cpu")
    opts.dense.enabled = False
    t0 = time.perf_counter()
    frames = list(read_frames(args.video, args.every, args.start, args.end))
    t_read = time.perf_counter() - t0
    res = Resources()
    det = res.detector(args.detect, opts.max_hands)
    t0 = time.perf_counter()
    dets = [det.detect(rgb) for _, _, rgb in frames]
    t_det = time.perf_counter() - t0
    print(f"{args.video}: {len(frames)} frames (every {args.every}), {sum(map(len, dets))} detections; "
          f"read {t_read:.1f}s, detect {t_det:.1f}s; torch/numba threads {threads}")
    print("| smoothing weight | tracks | frames/s (read+detect+fit) | fit s/frame | 3D jitter mm | 2D jitter px "
          "| detected 2D jitter px | 2D error px |")
    print("|---|---|---|---|---|---|---|---|")
    for w in [float(x) for x in args.weights.split(",")]:
        vopts = VideoOptions(every=args.every, smooth=w > 0, smooth_weight=w)
        t0 = time.perf_counter()
        tracks, fits = fit_video_frames(frames, dets, opts, vopts, res)
        t_fit = time.perf_counter() - t0
        m = [x for x in track_metrics(tracks, [track_outputs(f) for f in fits]) if x["frames"] >= 3]
        n = sum(x["frames"] for x in m) or 1

        def avg(k):
            return sum(x[k] * x["frames"] for x in m) / n

        print(f"| {w:g} | {len(tracks)} ({len(m)} with >= 3 frames) | {len(frames) / (t_read + t_det + t_fit):.2f} "
              f"| {t_fit / len(frames):.2f} | {avg('jitter_mm'):.2f} | {avg('jitter_px'):.2f} "
              f"| {avg('jitter_detected_px'):.2f} | {avg('kp2d_px'):.2f} |")


if __name__ == "__main__":
    main()
