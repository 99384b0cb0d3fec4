"""Videos: hands tracked across frames, warm-started fits, one shape per track,
temporal smoothness on pose and translation.

Per video (``OUT/<video>/``, written to a temporary sibling and renamed whole):
``frame_000123/`` (the photo layout: result.json, meshes, overlay.png) for
every fitted frame, ``tracks.npz`` and ``overlay.mp4`` at the source's frame
rate divided by ``--every``.

Frames are streamed, never all held in memory: a first decoding detects
each chosen frame and keeps only its detections; the tracks are fitted; a
second decoding writes the frames' folders and encodes overlay.mp4 one frame
at a time. A video is the unit of resume: its folder is committed whole, and
a video interrupted part way is redone from its start.

1. Detect every chosen frame (MediaPipe).
2. Track: a detection joins the live track of the same side whose last box
   overlaps it most (IoU >= 0.1); otherwise it starts a new track. A track
   survives ``MAX_GAP`` missed chosen frames in a row; it ends at the next.
3. Fit each track in order: its first frame from the regressor with the full
   keypoint stage; each later frame warm-started from the previous frame's
   pose and translation with ``warm_iters`` iterations and the shape fixed.
4. Refine each track jointly (all its frames in one batch): one shape shared
   by the track, the keypoint terms per frame, and, unless ``--no-smooth``, a
   penalty on the second differences (accelerations) of orientation, pose and
   translation.

The dense appearance stage is not run on video frames: they are fitted with
the keypoint stage, and the overlays show a flat skin texture.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import HandfitError, ImageError
from . import store

MAX_GAP = 3           # chosen frames in a row a track may miss and go on
MIN_IOU = 0.1
SIGMA_POSE = 0.3      # radians of acceleration per chosen frame that cost as much as ...
SIGMA_TRANSL = 0.005  # ... metres of acceleration; both against the 2D term's scale
SMOOTH_SCALE = 5e-5   # against the 2D term; chosen on the dev clip (docs/benchmarks.md)
REFINE_ITERS = 150


@dataclass
class Track:
    side: str
    frames: list = field(default_factory=list)   # indices into the chosen frames
    dets: list = field(default_factory=list)     # handfit.detect.Detection per frame

    @property
    def last_box(self):
        return self.dets[-1].box_xyxy


def iou(a, b) -> float:
    """IoU of two (4,) xyxy boxes."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def track(detections: list) -> list[Track]:
    """Link per-frame detections into tracks by side and box overlap (greedy, best IoU first).

    detections: one list of Detection per chosen frame. -> tracks, in order of first appearance
    """
    tracks: list[Track] = []
    for f, dets in enumerate(detections):
        live = [t for t in tracks if f - t.frames[-1] - 1 <= MAX_GAP]  # frames missed since its last
        pairs = sorted(((iou(t.last_box, d.box_xyxy), ti, di) for ti, t in enumerate(live)
                        for di, d in enumerate(dets) if t.side == d.side), reverse=True)
        used_t, used_d = set(), set()
        for score, ti, di in pairs:
            if score < MIN_IOU or ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            live[ti].frames.append(f)
            live[ti].dets.append(dets[di])
        for di, d in enumerate(dets):
            if di not in used_d:
                tracks.append(Track(d.side, [f], [d]))
    return tracks


def acceleration(x: torch.Tensor) -> torch.Tensor:
    """Second differences along the first axis: (T,...) -> (T-2,...)."""
    return x[2:] - 2 * x[1:-1] + x[:-2]


def jitter(points: np.ndarray) -> float:
    """Mean norm of the acceleration of (T,J,D) points (per chosen frame squared); nan when T < 3."""
    if len(points) < 3:
        return float("nan")
    a = points[2:] - 2 * points[1:-1] + points[:-2]
    return float(np.linalg.norm(a, axis=-1).mean())


def _smooth_terms(params: dict, weight: float) -> torch.Tensor:
    """(T,) smoothness penalty, each acceleration charged to its middle frame."""
    T = params["pose"].shape[0]
    out = params["pose"].new_zeros(T)
    if weight <= 0 or T < 3:
        return out
    rot = (acceleration(params["global_orient"]) ** 2).sum(-1) + (acceleration(params["pose"]) ** 2).sum(-1)
    tr = (acceleration(params["transl"]) ** 2).sum(-1)
    out[1:-1] = weight * SMOOTH_SCALE * (rot / SIGMA_POSE ** 2 + tr / SIGMA_TRANSL ** 2)
    return out


def fit_track(model, trk: Track, Ks: np.ndarray, opts, vopts, net, device, dtype=torch.float32) -> dict:
    """Fit one track. Ks: (T,3,3) of its frames. -> params dict of (T,·) tensors and reports."""
    from ..fitting.adam import run_adam
    from ..fitting.init import initialise
    from ..fitting.keypoint import fit_keypoints, keypoint_terms

    T = len(trk.frames)
    K = torch.tensor(Ks, device=device, dtype=dtype)
    kp2d = torch.tensor(np.stack([d.keypoints for d in trk.dets]), device=device, dtype=dtype)
    world = torch.tensor(np.stack([d.world for d in trk.dets]), device=device, dtype=dtype)
    box = np.stack([d.box_xyxy for d in trk.dets])
    scale = torch.tensor(np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]), device=device, dtype=dtype)
    ks = opts.keypoint
    warm_lrs = {"global_orient": ks.lr_orient, "pose": ks.lr_pose, "transl": ks.lr_transl}

    # Sequential pass: the first frame from the regressor, each later one warm-started.
    per_frame, iters = [], []
    params, method = initialise(model, world[:1], kp2d[:1], K[:1], net)
    rep = fit_keypoints(model, params, K[:1], kp2d[:1], world[:1], scale[:1], ks)
    per_frame.append({k: v.detach() for k, v in params.items()})
    iters.append(rep.iters)
    for t in range(1, T):
        params = {k: v.detach().clone() for k, v in per_frame[-1].items()}
        terms = keypoint_terms(model, K[t:t + 1], kp2d[t:t + 1], world[t:t + 1], scale[t:t + 1], ks.weights)
        rep = run_adam(params, warm_lrs, terms, max_iters=vopts.warm_iters, tol=ks.tol, patience=ks.patience)
        per_frame.append({k: v.detach() for k, v in params.items()})
        iters.append(rep.iters)
    seq = {k: torch.cat([p[k] for p in per_frame]) for k in per_frame[0]}

    # Joint refinement: one shape for the track, smoothness across its frames.
    shape = seq["shape"][:1].clone()
    joint = {"global_orient": seq["global_orient"].clone(), "pose": seq["pose"].clone(),
             "transl": seq["transl"].clone(), "shape1": shape}
    kterms = keypoint_terms(model, K, kp2d, world, scale, ks.weights)
    w = vopts.smooth_weight if vopts.smooth else 0.0

    def terms(p):
        full = {**p, "shape": p["shape1"].expand(T, -1)}
        t = kterms(full)
        t["smooth"] = _smooth_terms(full, w)
        return t

    lrs = {"global_orient": ks.lr_orient, "pose": ks.lr_pose, "transl": ks.lr_transl, "shape1": ks.lr_shape}
    rep = run_adam(joint, lrs, terms, max_iters=REFINE_ITERS, tol=ks.tol, patience=ks.patience)
    final = {"global_orient": joint["global_orient"], "pose": joint["pose"], "transl": joint["transl"],
             "shape": joint["shape1"].expand(T, -1).contiguous()}
    return {"params": final, "init": method, "warm_iters": iters, "refine_iters": rep.iters,
            "terms": {k: v.detach() for k, v in rep.terms.items()}, "kp2d": kp2d, "K": K}


def frame_K(width: int, height: int, opts) -> np.ndarray:
    """(3,3) intrinsics of a video frame: ``opts.intrinsics`` when given, else ``opts.focal`` or the default FOV
    (video frames carry no EXIF)."""
    from ..camera import intrinsics, intrinsics_matrix

    if opts.intrinsics is not None:
        return intrinsics_matrix(*opts.intrinsics)
    return intrinsics(width, height, focal=opts.focal)


def _hw(frame) -> tuple:
    """(H, W) of a chosen frame (index, seconds, rgb (H,W,3) or its size (H, W))."""
    x = frame[2]
    return tuple(x.shape[:2]) if hasattr(x, "shape") else tuple(x)


def fit_video_frames(frames: list, dets: list, opts, vopts, device=None) -> tuple:
    """Fit every track of a video. frames: [(index, seconds, rgb or (H, W))], dets: per frame detections.

    -> (tracks, fits): fits[i] is fit_track's dict for tracks[i] plus model outputs
    """
    from ..camera import project
    from ..fitting.init import load_regressor
    from ..models import load_model

    device = device or opts.torch_device()
    dtype = torch.float32
    tracks = track(dets)
    models, nets, fits = {}, {}, []
    for trk in tracks:
        if trk.side not in models:
            models[trk.side] = load_model(opts.model, side=trk.side, mano_path=opts.mano, device=device, dtype=dtype)
            nets[trk.side] = load_regressor(models[trk.side], device, dtype)
        model = models[trk.side]
        Ks = np.stack([frame_K(_hw(frames[f])[1], _hw(frames[f])[0], opts) for f in trk.frames])
        fit = fit_track(model, trk, Ks, opts, vopts, nets[trk.side], device, dtype)
        with torch.no_grad():
            out = model(**fit["params"])
            fit["uv"] = project(out.keypoints, fit["K"])
            fit["keypoints_3d"] = out.keypoints
            fit["vertices"] = out.vertices
        fit["model"] = model
        fits.append(fit)
    return tracks, fits


def _frame_hands(n: int, tracks) -> list:
    """Per chosen frame, the hands seen in it as (track index, index in the track), best score first."""
    out = [[] for _ in range(n)]
    for ti, trk in enumerate(tracks):
        for b, f in enumerate(trk.frames):
            out[f].append((ti, b))
    for hs in out:
        hs.sort(key=lambda tb: -float(tracks[tb[0]].dets[tb[1]].score))
    return out


def _hand_result(tracks, fits, ti: int, b: int, tex: np.ndarray, shared: dict):
    """The HandResult of track ``ti`` in its ``b``-th frame (built when its frame is written, not kept).
    ``shared``: per side the model's faces and UV arrays, made once (they are only read)."""
    from ..api import HandResult

    trk, fit = tracks[ti], fits[ti]
    model, p, d = fit["model"], fit["params"], trk.dets[b]
    if trk.side not in shared:
        shared[trk.side] = dict(faces=model.faces.cpu().numpy(), uv_coords=model.uv_coords.double().cpu().numpy(),
                                uv_faces=model.uv_faces.cpu().numpy())
    err = float((fit["uv"][b] - fit["kp2d"][b]).norm(dim=-1).mean())
    return HandResult(
        side=trk.side, score=float(d.score), bbox_xyxy=np.asarray(d.box_xyxy, np.float64),
        keypoints_2d_detected=np.asarray(d.keypoints, np.float64),
        keypoints_2d_fitted=fit["uv"][b].double().cpu().numpy(),
        keypoints_3d=fit["keypoints_3d"][b].double().cpu().numpy(),
        world_landmarks=np.asarray(d.world, np.float64),
        params=model.export_params({k: v[b:b + 1] for k, v in p.items()}),
        vertices=fit["vertices"][b].double().cpu().numpy(), **shared[trk.side],
        texture=tex, init=fit["init"] if b == 0 else "warm",
        losses={"keypoint": {k: float(v[b]) for k, v in fit["terms"].items()}},
        metrics={"kp2d_px": err, "track": ti, "keypoint_iters": fit["warm_iters"][b],
                 "refine_iters": fit["refine_iters"]},
        seconds=0.0)


def _skin_texture(opts) -> np.ndarray:
    from ..api import SKIN_RGB

    tex = np.empty((opts.texture_size, opts.texture_size, 3), np.uint8)
    tex[:] = (np.array(SKIN_RGB) * 255 + 0.5).astype(np.uint8)
    return tex


def _frame_result(rgb: np.ndarray, hands: list, opts):
    """The FitResult of one chosen frame: rgb (H,W,3) uint8, hands: its HandResults."""
    from ..api import FitResult

    H, W = rgb.shape[:2]
    return FitResult(image_path=None, width=W, height=H, K=np.asarray(frame_K(W, H, opts), np.float64),
                     model=opts.model, hands=hands, image=rgb)


def tracks_arrays(frames, tracks, fits) -> dict:
    """tracks.npz content: per track t, ``track<t>_*`` arrays, plus the chosen frames' indices and times."""
    out = {"frame_index": np.array([f[0] for f in frames], np.int64),
           "frame_seconds": np.array([f[1] for f in frames], np.float64),
           "num_tracks": np.array(len(tracks))}
    for t, (trk, fit) in enumerate(zip(tracks, fits)):
        pre = f"track{t}_"
        out[pre + "side"] = np.array(trk.side)
        out[pre + "frames"] = np.array([frames[f][0] for f in trk.frames], np.int64)
        for k, v in fit["params"].items():
            out[pre + k] = v.detach().double().cpu().numpy()
        out[pre + "keypoints_3d"] = fit["keypoints_3d"].double().cpu().numpy()      # (T,21,3) metres
        out[pre + "keypoints_2d"] = fit["uv"].double().cpu().numpy()                # (T,21,2) pixels
        out[pre + "keypoints_2d_detected"] = fit["kp2d"].double().cpu().numpy()     # (T,21,2) pixels
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


def run_video(path, opts, vopts, detector=None, progress=None) -> dict:
    """Read and detect a video frame by frame (keeping only the detections), then track and fit.

    -> dict with ``frames`` [(index, seconds, (H, W))] (no pixels: the caller
    decodes again to write), ``dets``, ``tracks``, ``fits``, ``seconds``."""
    from ..io.media import read_frames, video_info

    info = video_info(path)
    own = detector is None
    if own:
        from ..detect import Detector

        detector = Detector(max_hands=opts.max_hands, mode=opts.detect)
    t0 = time.perf_counter()
    frames, dets, t_detect = [], [], 0.0
    try:
        for idx, sec, rgb in read_frames(path, vopts.every, vopts.start, vopts.end):
            t = time.perf_counter()
            dets.append(detector.detect(rgb)[: opts.max_hands])
            t_detect += time.perf_counter() - t
            frames.append((idx, sec, tuple(rgb.shape[:2])))
    finally:
        if own and hasattr(detector, "close"):
            detector.close()
    if not frames:
        raise ImageError(f"{path}: no frame in the chosen range")
    t_read = time.perf_counter() - t0 - t_detect
    t1 = time.perf_counter()
    tracks, fits = fit_video_frames(frames, dets, opts, vopts)
    t_fit = time.perf_counter() - t1
    return {"info": info, "frames": frames, "dets": dets, "tracks": tracks, "fits": fits,
            "seconds": {"read": t_read, "detect": t_detect, "fit": t_fit}}


def track_metrics(frames, tracks, fits) -> list:
    out = []
    for t, (trk, fit) in enumerate(zip(tracks, fits)):
        kp3 = fit["keypoints_3d"].double().cpu().numpy()
        uv = fit["uv"].double().cpu().numpy()
        det = fit["kp2d"].double().cpu().numpy()
        out.append({"side": trk.side, "score": round(float(np.mean([d.score for d in trk.dets])), 4),
                    "track": t, "frames": len(trk.frames),
                    "kp2d_px": round(float(np.linalg.norm(uv - det, axis=-1).mean()), 3),
                    "jitter_mm": round(jitter(kp3) * 1000, 3), "jitter_px": round(jitter(uv), 3),
                    "jitter_detected_px": round(jitter(det), 3)})
    return out


def process_video(unit, job, run_id: str) -> dict:
    """Fit a whole video and commit OUT/<video>/ atomically. -> its summary record

    Never raises for one bad video: any failure becomes its ``error`` record
    (KeyboardInterrupt and SystemExit still end the run).
    """
    from .records import describe, error_record

    t0 = time.perf_counter()
    try:
        return _process_video(unit, job, run_id, t0)
    except HandfitError as exc:
        return error_record(unit, str(exc), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the batch
        return error_record(unit, f"video failed: {describe(exc)}", time.perf_counter() - t0)


def _process_video(unit, job, run_id: str, t0: float) -> dict:
    from ..io.media import read_frames
    from ..io.save import save_result

    opts, vopts = job.fit_options(), job.video
    res = run_video(unit.path, opts, vopts)
    frames, tracks, fits = res["frames"], res["tracks"], res["fits"]
    per_frame = _frame_hands(len(frames), tracks)
    hands = sum(map(len, per_frame))
    metrics = track_metrics(frames, tracks, fits)
    fps = Fraction(res["info"].fps).limit_denominator(1001) / vopts.every
    names = [f"frame_{idx:06d}" for idx, _, _ in frames]
    poster = names[len(names) // 2]
    record = {"path": unit.path, "key": unit.key, "kind": "video", "status": "ok" if hands else "no_hand",
              "hands": hands, "seconds": 0.0, "message": "" if hands else "no hand found in any frame",
              "frames": len(frames), "tracks": len(tracks), "fps": float(fps), "hand_metrics": metrics,
              "overlay_video": f"{unit.key}/overlay.mp4", "poster": f"{unit.key}/{poster}/overlay.png",
              "overlay": f"{unit.key}/{poster}/overlay.png", "run": run_id}

    tex, shared = _skin_texture(opts), {}

    def overlays(tmp: Path):
        """Decode the video again and write each chosen frame's folder; -> its overlay, one at a time."""
        from PIL import Image

        f = 0
        for idx, _, rgb in read_frames(unit.path, vopts.every, vopts.start, vopts.end):
            if f == len(frames):
                break
            if idx != frames[f][0] or tuple(rgb.shape[:2]) != frames[f][2]:
                raise ImageError(f"{unit.path}: the second decoding gave frame {idx}, not {frames[f][0]}")
            r = _frame_result(rgb, [_hand_result(tracks, fits, ti, b, tex, shared) for ti, b in per_frame[f]], opts)
            r.image_path = f"{unit.path}#frame={idx}"
            folder = save_result(r, tmp, names[f])
            del r, rgb
            f += 1
            yield np.asarray(Image.open(folder / "overlay.png").convert("RGB"))
        if f != len(frames):
            raise ImageError(f"{unit.path}: the second decoding ended after {f} of {len(frames)} frames")

    def fill(tmp: Path):
        write_mp4(tmp / "overlay.mp4", overlays(tmp), fps)
        np.savez_compressed(tmp / "tracks.npz", fps=float(fps), source_fps=res["info"].fps, every=vopts.every,
                            smooth=vopts.smooth, **tracks_arrays(frames, tracks, fits))
        record["seconds"] = round(time.perf_counter() - t0, 3)
        (tmp / store.STATUS).write_text(store.dumps(record))

    store.commit(job.out, unit.key, fill, job.tag)
    return record
