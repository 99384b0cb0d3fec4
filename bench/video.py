"""Video fitting: jitter (mean keypoint acceleration) with and without temporal
smoothing, and frames per second; with ``--dense``, the dense stage's seconds
per frame per hand and quality in each way of finishing the frames.

    python bench/video.py [VIDEO] [--every 5] [--end N] [--try track.smooth=0 track.smooth=1]
    python bench/video.py [VIDEO] --every 5 --end 100 --dense track,frame,photo [--set dense.lr_light=0]

Follows the hands through the chosen frames once (as ``handfit batch``), then fits the tracks once per setting (``--try``:
space-separated FitOptions ``PATH=VALUE``; by default the smoothing weight
``track.smooth`` 0, no temporal terms, and 1). Jitter is the mean norm of the second
difference of the fitted keypoints between consecutive chosen frames: 3D in
millimetres (camera frame), 2D in pixels; the detector's own 2D jitter is the
reference. frames/s counts read + detect + fit (not writing the outputs).

``--dense`` modes, each on the same detections with the default options (plus ``--set``):
``track`` the sequence default (``handfit batch`` on a video: fit_track, then
finish_track: one texture per track, every frame's dense stage against it);
``frame`` the sequence with a texture per frame (fit_track, then finish per frame,
the video default before the track texture); ``photo`` the single-frame default
(each frame alone through the photo pipeline, ``handfit fit`` on that frame);
``track2`` the track texture refined once (:func:`refit_track`; not a default).
Seconds are wall time per hand (keypoint + dense stages; detection excluded);
photometric error and silhouette IoU are the dense stage's own measures after it.
"""

from __future__ import annotations

import argparse
import time

import _common as C

TRIES = ["track.smooth=0", "track.smooth=1"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", nargs="?", default=str(C.data("dev", "tfjs_models", "asl_hand.25fps.mp4")))
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--end", type=int, default=None)
    ap.add_argument("--try", dest="tries", nargs="+", action="extend", default=None, metavar="'PATH=VALUE ...'",
                    help=f"keypoint-stage settings to compare (default: {' | '.join(TRIES)})")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--detect", default="thorough", choices=("fast", "thorough"),
                    help="detection cascade (handfit batch uses --detect, default thorough, for videos too)")
    ap.add_argument("--dense", default="", help="comma list of track, frame, photo, track2: time the dense stage's "
                                                "ways of finishing the frames (see above)")
    C.add_set_option(ap)
    args = ap.parse_args()

    from handfit.batch.threads import configure_threads

    threads = configure_threads(args.threads)
    from handfit.batch.video import fit_video_frames, track_metrics, track_outputs
    from handfit.detect.tracking import Follower
    from handfit.fitting.resources import Resources
    from handfit.io.media import read_frames

    opts = C.fit_options(args.set, {"device": "cpu", "dense.enabled": False})
    t0 = time.perf_counter()
    frames = list(read_frames(args.video, args.every, args.start, args.end))
    t_read = time.perf_counter() - t0
    res = Resources()
    det = res.detector(args.detect, opts.max_hands)
    t0 = time.perf_counter()
    follower = Follower.for_options(det, opts)
    for _, _, rgb in frames:
        follower.step(rgb)
    base = [(t.frames, t.dets) for t in follower.finish()]
    t_det = time.perf_counter() - t0
    print(f"{args.video}: {len(frames)} frames (every {args.every}), {sum(len(f) for f, _ in base)} hands in "
          f"{len(base)} tracks ({follower.passes}); read {t_read:.1f}s, follow {t_det:.1f}s; torch/numba threads {threads}")
    print("| setting | tracks | frames/s (read+detect+fit) | fit s/frame | 3D jitter mm | 2D jitter px "
          "| detected 2D jitter px | 2D error px |")
    print("|---|---|---|---|---|---|---|---|")
    for s in args.tries or TRIES:
        opts = C.fit_options(args.set + [s],
                             {"device": "cpu", "dense.enabled": False})
        t0 = time.perf_counter()
        tracks = tracks_of(base)
        fits = fit_video_frames(frames, tracks, opts, res)
        t_fit = time.perf_counter() - t0
        m = [x for x in track_metrics(tracks, [track_outputs(f) for f in fits]) if x["frames"] >= 3]
        n = sum(x["frames"] for x in m) or 1

        def avg(k):
            return sum(x[k] * x["frames"] for x in m) / n

        print(f"| {C.describe([s])} | {len(tracks)} ({len(m)} with >= 3 frames) | {len(frames) / (t_read + t_det + t_fit):.2f} "
              f"| {t_fit / len(frames):.2f} | {avg('jitter_mm'):.2f} | {avg('jitter_px'):.2f} "
              f"| {avg('jitter_detected_px'):.2f} | {avg('kp2d_px'):.2f} |")
    if args.dense:
        dense_modes(frames, base, args, res)


def tracks_of(base: list) -> list:
    """Fresh Track objects from the followed (frames, detections) of each track (a fit changes its track)."""
    from handfit.detect.tracking import Track

    return [Track(d[0].side, list(f), list(d)) for f, d in base]


def finish_modes(mode: str, frames, base, opts, res) -> list:
    """Fit the frames one way (see the module docstring). -> lists of HandResult per track (or per frame)"""
    from dataclasses import replace

    from handfit.batch.video import fit_video_frames
    from handfit.fitting.pipeline import HandItem, finish, finish_track, fit_hands, frame_intrinsics

    if mode == "photo":
        out = []
        for fs, ds in base:
            for f, d in zip(fs, ds):
                rgb = frames[f][2]
                K = frame_intrinsics(rgb.shape[1], rgb.shape[0], opts)
                out.append(fit_hands([HandItem(K, d, rgb)], opts, res))
        return out
    tracks = tracks_of(base)
    fits = fit_video_frames(frames, tracks, opts, res)
    out = []
    for trk, fit in zip(tracks, fits):
        fit.items = [replace(it, rgb=frames[f][2]) for it, f in zip(fit.items, trk.frames)]
        if mode == "track":
            out.append(finish_track(fit, opts, res))
        elif mode == "track2":
            out.append(refit_track(fit, opts, res))
        else:
            out.append([finish(fit.select([b]), opts, res)[0] for b in range(len(fit.items))])
    return out


def refit_track(fit, opts, res) -> list:
    """``track2``: finish_track, then the texture accumulated again from the meshes its
    dense stage aligned, and every frame's dense stage run again (from the keypoint fit)
    against that second texture: what refining the track texture once would give."""
    from handfit.fitting.pipeline import finish, observe_track, track_texture

    idx = list(range(len(fit.items)))
    first = fit.select(idx)
    acc = observe_track(first, opts, res)
    aligned = fit.select(idx)
    finish(aligned, opts, res, texture=track_texture(acc, opts, res))
    return finish(fit.select(idx), opts, res, texture=track_texture(observe_track(aligned, opts, res), opts, res))


def dense_modes(frames, base, args, res):
    """The ``--dense`` table: per mode, seconds per frame per hand and the dense stage's measures."""
    import numpy as np

    from handfit.batch.video import jitter

    print(f"\ndense stage, --set {args.set or '(none)'}; wall seconds per hand include the keypoint stage")
    print("| mode | hands | s per frame per hand | photometric after | silhouette IoU after | 2D error px "
          "| 3D jitter mm |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.dense.split(","):
        opts = C.fit_options(args.set, {"device": "cpu", "detect": args.detect})
        t0 = time.perf_counter()
        groups = finish_modes(mode, frames, base, opts, res)
        wall = time.perf_counter() - t0
        hands = [h for g in groups for h in g]
        m = lambda k: float(np.mean([h.metrics[k] for h in hands]))  # noqa: E731
        jit = ("—" if mode == "photo" else
               f"{np.mean([jitter(np.stack([h.keypoints_3d for h in g])) * 1000 for g in groups if len(g) >= 3]):.2f}")
        print(f"| {mode} | {len(hands)} | {wall / max(len(hands), 1):.2f} | {m('photometric_after'):.4f} "
              f"| {m('silhouette_iou_after'):.3f} | {m('kp2d_px'):.2f} | {jit} |", flush=True)


if __name__ == "__main__":
    main()
