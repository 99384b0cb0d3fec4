"""Videos: every hand followed through the clip, one track each, fitted with warm starts,
one shape, temporal terms and one texture per track: the path ``handfit eval --sequence``
measures (:mod:`handfit.eval.sequence`).

Per video (``OUT/<video>/``, written to a temporary sibling and renamed whole):
``frame_000123/`` (the photo layout: result.json, .obj meshes, parameters, overlay.png; no
per-frame .glb, which ``track<t>.glb`` replaces) for every fitted frame, ``track<t>_texture.png`` (each track's one texture, which
its frames' .mtl files refer to as ``../track<t>_texture.png``), ``track<t>.glb``
(the track as one animated, skinned, textured hand: :mod:`handfit.io.gltf_track`), ``tracks.npz``
and ``overlay.mp4`` at the source's frame rate divided by ``--every``.

Frames are streamed, never all held in memory. The video is decoded four times
(each decoding costs a few milliseconds a frame; holding a frame costs megabytes):

1. **follow** (:class:`handfit.detect.tracking.Follower`): the detection cascade on the
   first frame, when a track missed a frame and every ``track.redetect`` frames; in between
   each tracked hand is looked for where it is predicted to be. Detections are linked to
   tracks by predicted keypoints, not by side, and every hand gets the evidence step
   (:mod:`handfit.detect.evidence`: ``views`` views of its crop, for its side and its
   evidence). Only the detections are kept.
2. **fit** each track, the tracks side by side (:func:`handfit.fitting.pipeline.fit_track`):
   the side decided once per track, then :mod:`handfit.fitting.temporal`: the first frame initialised and fitted in
   full, each later frame warm-started from the one before, then all frames refined together
   with one shape and, unless ``--no-smooth`` (``FitOptions.track.smooth`` 0), a penalty on
   accelerations.
3. Unless ``--no-dense``, :func:`finish_tracks` (:class:`~handfit.fitting.pipeline.TrackFinish`):
   a decoding accumulates each track's texture over its frames, a second fits each frame's
   dense stage against it (the track's shape and texture fixed), and each track is settled.
4. **write**: a last decoding writes the frames' folders and encodes overlay.mp4 one frame at
   a time; then the tracks' glTF files and tracks.npz.

A video is the unit of resume: its folder is committed whole, and a video interrupted part
way is redone from its start.
"""

from __future__ import annotations

import time
from collections import deque
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import HandfitError, ImageError
from ..parallel import each, submit, workers
from . import store

TEXTURE_NAME = "track{}_texture.png"  # a track's one texture, in the video's folder
GLB_NAME = "track{}.glb"              # a track's animated, skinned hand (handfit.io.gltf_track)
OVERLAY_COMPRESS = 1                  # zlib level of a frame's overlay.png: a video writes hundreds


def jitter(points: np.ndarray) -> float:
    """Mean norm of the acceleration of (T,J,D) points (per chosen frame squared); nan when T < 3."""
    if len(points) < 3:
        return float("nan")
    a = points[2:] - 2 * points[1:-1] + points[:-2]
    return float(np.linalg.norm(a, axis=-1).mean())


def fit_video_frames(frames: list, tracks: list, opts, res=None) -> list:
    """Fit every track's keypoint stages (no pixels needed).

    frames: [(index, seconds, rgb or (H, W))] of the chosen frames; tracks: their
    :class:`~handfit.detect.tracking.Track` objects (:class:`~handfit.detect.tracking.Follower`);
    res: a :class:`~handfit.fitting.resources.Resources` (default: a new one).
    -> fits: fits[i] is the :class:`~handfit.fitting.pipeline.SideFit` of tracks[i]; each
    track's ``side`` and ``dets`` become the fit's."""
    from ..fitting.pipeline import HandItem, fit_track, frame_intrinsics
    from ..fitting.resources import Resources

    res = res or Resources()

    def one(trk):
        items = [HandItem(frame_intrinsics(_hw(frames[f])[1], _hw(frames[f])[0], opts), d, frame=int(frames[f][0]))
                 for f, d in zip(trk.frames, trk.dets)]
        return fit_track(items, opts, res)

    # the tracks side by side (each on one core: fit_track's ops are too small to share out)
    fits = each(one, tracks)
    for trk, fit in zip(tracks, fits):
        trk.side = fit.side
        trk.dets = [it.detection for it in fit.items]
    return fits


def _hw(frame) -> tuple:
    """(H, W) of a chosen frame (index, seconds, rgb (H,W,3) or its size (H, W))."""
    x = frame[2]
    return tuple(x.shape[:2]) if hasattr(x, "shape") else tuple(x)


def track_outputs(fit, assembled: bool = True) -> dict:
    """Per-frame arrays of a fitted track: keypoints_3d (T,21,3), keypoints_2d (T,21,2),
    keypoints_2d_detected (T,21,2), params name -> (T,·), losses "stage.term" -> (T,),
    dense (T,) bool. ``assembled``: filled with the track's keypoint-stage values; else
    left empty for the finished frames to fill."""
    from ..fitting.pipeline import assemble

    T = len(fit.items)
    out = {"keypoints_3d": np.zeros((T, 21, 3)), "keypoints_2d": np.zeros((T, 21, 2)),
           "keypoints_2d_detected": fit.batch.kp2d.double().cpu().numpy(), "params": {}, "losses": {},
           "dense": np.zeros(T, bool)}
    if assembled:
        for b, h in enumerate(assemble(fit, texture_size=1)):
            _record_frame(out, b, h)
    return out


def _record_frame(out: dict, b: int, h) -> None:
    T = len(out["keypoints_3d"])
    out["keypoints_3d"][b] = h.keypoints_3d
    out["keypoints_2d"][b] = h.keypoints_2d_fitted
    for k, v in h.params.items():
        if isinstance(v, str):  # side, model
            continue
        v = np.asarray(v, np.float64).reshape(-1)
        out["params"].setdefault(k, np.zeros((T, v.size)))[b] = v
    for stage, terms in h.losses.items():
        for k, v in terms.items():
            out["losses"].setdefault(f"{stage}.{k}", np.full(T, np.nan))[b] = v
    out["dense"][b] = "dense" in h.losses


def decode_chosen(path, frames: list, vopts):
    """Decode the chosen frames again, checking they are the ones the first decoding saw.

    frames: [(index, seconds, (H, W))] -> yields (position in frames, rgb (H,W,3) uint8), one at a time."""
    from ..io.media import read_frames

    f = 0
    for idx, _, rgb in read_frames(path, vopts.every, vopts.start, vopts.end):
        if f == len(frames):
            break
        if idx != frames[f][0] or tuple(rgb.shape[:2]) != frames[f][2]:
            raise ImageError(f"{path}: a later decoding gave frame {idx}, not {frames[f][0]}")
        yield f, rgb
        del rgb
        f += 1
    if f != len(frames):
        raise ImageError(f"{path}: a later decoding ended after {f} of {len(frames)} frames")


def finish_tracks(path, frames: list, per_frame: list, fits: list, opts, vopts, res) -> list:
    """Every track's dense stage, from two more decodings of the video that each hold one
    frame at a time (and :class:`~handfit.fitting.pipeline.TrackFinish` at most a chunk of
    each track's frames): the first adds what each frame shows to its tracks' textures, the
    second fits each frame's hands against them; then each track is settled and assembled.

    per_frame: per chosen frame its hands [(track index, index in the track)] (:func:`_frame_hands`).
    -> per track its T HandResults in frame order (the keypoint fits with the flat texture
    when the dense stage is off, without decoding)."""
    from ..fitting.pipeline import TrackFinish

    finishers = [TrackFinish(fit, opts, res) for fit in fits]
    if opts.dense.enabled and fits:
        for f, rgb in decode_chosen(path, frames, vopts):
            for ti, b in per_frame[f]:
                finishers[ti].observe(b, rgb)
        for fin in finishers:
            fin.texture()
        for f, rgb in decode_chosen(path, frames, vopts):
            for ti, b in per_frame[f]:
                finishers[ti].dense(b, rgb)
    return [fin.results() for fin in finishers]


def _frame_hands(n: int, tracks) -> list:
    """Per chosen frame, the hands seen in it as (track index, index in the track), best score first."""
    out = [[] for _ in range(n)]
    for ti, trk in enumerate(tracks):
        for b, f in enumerate(trk.frames):
            out[f].append((ti, b))
    for hs in out:
        hs.sort(key=lambda tb: -float(tracks[tb[0]].dets[tb[1]].score))
    return out


def _frame_result(rgb: np.ndarray, hands: list, opts):
    """The FitResult of one chosen frame: rgb (H,W,3) uint8, hands: its HandResults."""
    from ..fitting.pipeline import frame_intrinsics
    from ..fitting.results import FitResult

    H, W = rgb.shape[:2]
    return FitResult(image_path=None, width=W, height=H, K=frame_intrinsics(W, H, opts),
                     model=opts.model, hands=hands, image=rgb)


def tracks_arrays(frames, tracks, outputs) -> dict:
    """tracks.npz content: per track t, ``track<t>_*`` arrays (its final per-frame values,
    :func:`track_outputs`), plus the chosen frames' indices and times."""
    out = {"frame_index": np.array([f[0] for f in frames], np.int64),
           "frame_seconds": np.array([f[1] for f in frames], np.float64),
           "num_tracks": np.array(len(tracks))}
    for t, (trk, o) in enumerate(zip(tracks, outputs)):
        pre = f"track{t}_"
        out[pre + "side"] = np.array(trk.side)
        out[pre + "side_source"] = np.array(getattr(trk.dets[0], "side_source", "detector"))
        out[pre + "frames"] = np.array([frames[f][0] for f in trk.frames], np.int64)
        for k, v in o["params"].items():
            out[pre + k] = v
        out[pre + "keypoints_3d"] = o["keypoints_3d"]                     # (T,21,3) metres
        out[pre + "keypoints_2d"] = o["keypoints_2d"]                     # (T,21,2) pixels
        out[pre + "keypoints_2d_detected"] = o["keypoints_2d_detected"]   # (T,21,2) pixels
        out[pre + "dense"] = o["dense"]                                   # (T,) the dense stage ran
        for k, v in o["losses"].items():                                  # (T,) per-frame fit losses
            out[pre + "loss_" + k.replace(".", "_")] = v
        out[pre + "score"] = np.array([d.score for d in trk.dets], np.float64)
    return out


def write_mp4(path: Path, images, fps: Fraction):
    """Encode (H,W,3) uint8 frames, an iterable consumed one at a time, as H.264 (yuv420p).

    The video takes the first frame's size, padded to even; a later frame of
    another size is padded or cropped to it."""
    import av

    c = s = None
    try:
        for img in images:
            if s is None:
                H, W = img.shape[0] + img.shape[0] % 2, img.shape[1] + img.shape[1] % 2
                c = av.open(str(path), "w")
                s = c.add_stream("libx264", rate=fps)
                s.width, s.height, s.pix_fmt = W, H, "yuv420p"
                s.options = {"crf": "23", "preset": "veryfast"}
            canvas = np.zeros((H, W, 3), np.uint8)
            h, w = min(H, img.shape[0]), min(W, img.shape[1])
            canvas[:h, :w] = img[:h, :w]
            for pkt in s.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                c.mux(pkt)
        if s is not None:
            for pkt in s.encode():
                c.mux(pkt)
    finally:
        if c is not None:
            c.close()


def run_video(path, opts, vopts, res=None) -> dict:
    """Read a video frame by frame, following its hands (keeping only their detections:
    :class:`~handfit.detect.tracking.Follower`, with each hand's evidence step), then fit each
    track's keypoint stages (:func:`fit_video_frames`).

    res: a :class:`~handfit.fitting.resources.Resources` (default: a new one, closed after).
    -> dict with ``frames`` [(index, seconds, (H, W))] (no pixels: the caller
    decodes again to finish and write), ``tracks``, ``fits``, ``seconds`` and ``passes``
    (how many frames ran the cascade, how many hands were found where predicted)."""
    from ..detect.tracking import Follower
    from ..fitting.resources import Resources
    from ..io.media import read_frames, video_info

    info = video_info(path)
    own = res is None
    res = res or Resources()
    t0 = time.perf_counter()
    frames, t_detect = [], 0.0
    try:
        follower = Follower.for_options(res.detector(opts.detect, opts.max_hands), opts)
        for idx, sec, rgb in read_frames(path, vopts.every, vopts.start, vopts.end):
            t1 = time.perf_counter()
            follower.step(rgb)
            t_detect += time.perf_counter() - t1
            frames.append((idx, sec, tuple(rgb.shape[:2])))
        if not frames:
            raise ImageError(f"{path}: no frame in the chosen range")
        tracks = follower.finish()
        t_read = time.perf_counter() - t0 - t_detect
        t1 = time.perf_counter()
        fits = fit_video_frames(frames, tracks, opts, res)
        t_fit = time.perf_counter() - t1
    finally:
        if own:
            res.close()
    return {"info": info, "frames": frames, "tracks": tracks, "fits": fits, "passes": dict(follower.passes),
            "seconds": {"read": t_read, "detect": t_detect, "fit": t_fit}}


def track_metrics(tracks, outputs) -> list:
    """Per track: side, mean score, frames, 2D error and jitter of its final per-frame values."""
    out = []
    for t, (trk, o) in enumerate(zip(tracks, outputs)):
        kp3, uv, det = o["keypoints_3d"], o["keypoints_2d"], o["keypoints_2d_detected"]
        out.append({"side": trk.side, "score": round(float(np.mean([d.score for d in trk.dets])), 4),
                    "track": t, "frames": len(trk.frames),
                    "side_source": getattr(trk.dets[0], "side_source", "detector"),
                    "kp2d_px": round(float(np.linalg.norm(uv - det, axis=-1).mean()), 3),
                    "jitter_mm": round(jitter(kp3) * 1000, 3), "jitter_px": round(jitter(uv), 3),
                    "jitter_detected_px": round(jitter(det), 3)})
    return out


def process_video(unit, job, run_id: str, res=None) -> dict:
    """Fit a whole video and commit OUT/<video>/ atomically. -> its summary record

    res: the process's :class:`~handfit.fitting.resources.Resources` (default: a new one).
    Never raises for one bad video: any failure becomes its ``error`` record
    (KeyboardInterrupt and SystemExit still end the run).
    """
    from .records import describe, error_record

    t0 = time.perf_counter()
    own = res is None
    if own:
        from ..fitting.resources import Resources

        res = Resources()
    try:
        return _process_video(unit, job, run_id, t0, res)
    except HandfitError as exc:
        return error_record(unit, str(exc), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the batch
        return error_record(unit, f"video failed: {describe(exc)}", time.perf_counter() - t0)
    finally:
        if own:
            res.close()


def _process_video(unit, job, run_id: str, t0: float, res) -> dict:
    from ..io.export import write_png
    from ..io.gltf_track import write_video_track
    from ..io.save import save_result
    from .records import video_quality

    opts, vopts = job.fit_options(), job.video
    run = run_video(unit.path, opts, vopts, res)
    frames, tracks, fits = run["frames"], run["tracks"], run["fits"]
    per_frame = _frame_hands(len(frames), tracks)
    hands = sum(map(len, per_frame))
    fps = Fraction(run["info"].fps).limit_denominator(1001) / vopts.every
    names = [f"frame_{idx:06d}" for idx, _, _ in frames]
    poster = names[len(names) // 2]
    record = {"path": unit.path, "key": unit.key, "kind": "video", "status": "ok" if hands else "no_hand",
              "hands": hands, "suspect": 0, "seconds": 0.0,
              "message": "" if hands else "no hand found in any frame",
              "frames": len(frames), "tracks": len(tracks), "fps": float(fps), "hand_metrics": [],
              "overlay_video": f"{unit.key}/overlay.mp4", "poster": f"{unit.key}/{poster}/overlay.png",
              "overlay": f"{unit.key}/{poster}/overlay.png", "run": run_id,
              "detection": run["passes"]}
    # every track finished (dense stage, settled) before any frame is written
    t1 = time.perf_counter()
    results = finish_tracks(unit.path, frames, per_frame, fits, opts, vopts, res)
    record["stage_seconds"] = {"follow": round(run["seconds"]["detect"] + run["seconds"]["read"], 2),
                               "fit": round(run["seconds"]["fit"], 2), "finish": round(time.perf_counter() - t1, 2)}
    outputs = [track_outputs(fit, assembled=False) for fit in fits]
    for ti, hs in enumerate(results):
        for b, h in enumerate(hs):
            h.metrics["track"] = ti
            _record_frame(outputs[ti], b, h)
    textures = [hs[0].texture for hs in results] if opts.dense.enabled and results else None
    suspects = [(frames[trk.frames[b]][0], ti, h.quality_reasons) for ti, (trk, hs) in enumerate(zip(tracks, results))
                for b, h in enumerate(hs) if h.quality == "suspect"]  # (frame number, track, reasons), for the record

    def save(tmp: Path, f: int, rgb):
        """Write chosen frame f's folder. -> its overlay"""
        r = _frame_result(rgb, [results[ti][b] for ti, b in per_frame[f]], opts)
        r.image_path = f"{unit.path}#frame={frames[f][0]}"
        shared = None if textures is None else [f"../{TEXTURE_NAME.format(ti)}" for ti, _ in per_frame[f]]
        save_result(r, tmp, names[f], texture_files=shared, overlay_compress=OVERLAY_COMPRESS, glb=False)
        return r.overlay

    def overlays(tmp: Path):
        """Decode the video again and write each chosen frame's folder on the pool's threads
        (:func:`handfit.parallel.submit`), a few frames ahead; -> their overlays in frame
        order, one at a time, so that decoding and encoding overlap the next frames' writing."""
        ahead: deque = deque()
        for f, rgb in decode_chosen(unit.path, frames, vopts):
            ahead.append(submit(save, tmp, f, rgb))
            if len(ahead) > 2 * workers():
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()

    def fill(tmp: Path):
        t2 = time.perf_counter()
        if textures is not None:
            for t, tex in enumerate(textures):
                write_png(tmp / TEXTURE_NAME.format(t), tex)
        write_mp4(tmp / "overlay.mp4", overlays(tmp), fps)
        for t, (trk, o) in enumerate(zip(tracks, outputs)):
            write_video_track(tmp / GLB_NAME.format(t), res.model(opts.model, trk.side, opts.mano), o["params"],
                              [frames[f][0] for f in trk.frames], run["info"].fps, None if textures is None else textures[t])
        record["stage_seconds"]["write"] = round(time.perf_counter() - t2, 2)
        record["hand_metrics"] = track_metrics(tracks, outputs)
        record["suspect"] = video_quality(suspects, record["hand_metrics"])
        np.savez_compressed(tmp / "tracks.npz", fps=float(fps), source_fps=run["info"].fps, every=vopts.every,
                            smooth=opts.track.smooth > 0, **tracks_arrays(frames, tracks, outputs))
        record["seconds"] = round(time.perf_counter() - t0, 3)
        (tmp / store.STATUS).write_text(store.dumps(record))

    store.commit(job.out, unit.key, fill, job.tag)
    return record
