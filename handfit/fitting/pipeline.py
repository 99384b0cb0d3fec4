"""The one fit pipeline: detected hands in, :class:`HandResult` objects out.

Every caller (``handfit.fit``/``fit_batch``, ``handfit eval``, batch photos
and batch videos) comes through here, and every hand goes through the same
stages in this order:

0. **evidence** (before the fit, in :mod:`handfit.detect.evidence`): each hand's crop
   seen in ``views`` views, once: each side's candidate and the fused evidence;
1. **side decision** (:mod:`.side`): when MediaPipe's handedness is unsure,
   both hand models are fitted to their sides' candidates and the better one is kept;
2. **initialise** (:mod:`.init`): the regressor (or IK) from the world
   landmarks, translation from the 2D keypoints;
3. **keypoint** (:mod:`.keypoint`): pose, shape and translation against the
   2D keypoints and world landmarks; for a video track, the warm-started
   sequence with one shape and temporal terms instead (:mod:`.temporal`);
4. **dense** (:mod:`.dense`): the geometry phase against the rendered
   appearance, then the UV texture and light (skipped with
   ``dense.enabled = False``, or for a hand given without its photo); for a
   video track, one texture accumulated over all its frames
   (:mod:`handfit.texture.track`) is the appearance of every frame's
   geometry phase instead (:func:`finish_track`);
5. **assemble**: numpy results in full-photo coordinates (:func:`assemble`).

Hands are grouped per side, each side in one batch (:class:`SideFit`).
Resources (detectors, models, regressors, priors) come in as one
:class:`~handfit.fitting.resources.Resources`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from ..camera import project
from ..options import FitOptions, QualityStage
from ..parallel import one_torch_thread
from .hands import HandBatch, HandItem, to_batch
from .resources import Resources
from .results import FitResult, HandResult, flat_texture

__all__ = ["HandItem", "HandBatch", "SideFit", "to_batch", "fit_hands", "fit_side", "fit_track", "finish",
           "finish_track", "TrackFinish", "settle", "observe_track", "track_texture", "assemble", "frame_intrinsics",
           "Resources", "FitResult", "HandResult"]

SIDE_ORDER = ("right", "left")   # the batch order of the sides (results come back in the items' order)


@dataclass
class SideFit:
    """B hands of one side, one model, between stages. Tensors are (B,·)."""

    side: str
    model: object                   # handfit.models.HandModel
    items: list                     # B HandItem
    batch: HandBatch
    params: dict                    # global_orient, pose, shape, transl
    init: list                      # per hand: "regressor" | "ik" | "warm"
    losses: dict = field(default_factory=dict)    # stage -> term -> (B,) tensor
    metrics: dict = field(default_factory=dict)   # name -> (B,) tensor or list, or one value for all
    stages: dict = field(default_factory=dict)    # stage -> {"keypoints_3d": (B,21,3), "keypoints_2d": (B,21,2)}
    textures: list | None = None    # B (T,T,3) uint8 after the dense stage
    seconds: np.ndarray | None = None  # (B,) each hand's share of the optimisation time
    track: bool = False             # frames of one video track: one shape, kept by later stages

    def select(self, idx) -> "SideFit":
        """The hands ``idx`` (a list of indices) as a SideFit of their own."""
        idx = list(idx)
        t = torch.as_tensor(idx, dtype=torch.long, device=self.batch.K.device)

        def pick(v):
            if torch.is_tensor(v) and v.dim() > 0:
                return v[t]
            if isinstance(v, np.ndarray) and v.ndim > 0:
                return v[idx]
            if isinstance(v, list):
                return [v[i] for i in idx]
            return v

        return SideFit(self.side, self.model, [self.items[i] for i in idx], self.batch.select(idx),
                       {k: v.detach()[t] for k, v in self.params.items()}, pick(self.init),
                       {s: {k: pick(v) for k, v in terms.items()} for s, terms in self.losses.items()},
                       {k: pick(v) for k, v in self.metrics.items()},
                       {s: {k: pick(v) for k, v in d.items()} for s, d in self.stages.items()},
                       None if self.textures is None else pick(self.textures),
                       None if self.seconds is None else self.seconds[idx], self.track)


ProgressFn = Callable[[str, str, int, int], None]   # (stage, side, iteration, total)


def frame_intrinsics(width: int, height: int, opts: FitOptions, exif_focal: float | None = None) -> np.ndarray:
    """(3,3) intrinsics of a photo or video frame: ``opts.intrinsics`` when given, else
    ``opts.focal``, the photo's EXIF focal length, or the default field of view."""
    from ..camera import intrinsics, intrinsics_matrix

    if opts.intrinsics is not None:
        return np.asarray(intrinsics_matrix(*opts.intrinsics), np.float64)
    return np.asarray(intrinsics(width, height, focal=opts.focal, exif_focal=exif_focal), np.float64)


def _device(opts: FitOptions):
    return opts.torch_device(), torch.float32


# -- stages -------------------------------------------------------------------------------------


def decide_sides(items: list, opts: FitOptions, res: Resources) -> list:
    """Stage 1: each uncertain detection's side (:func:`.side.resolve_sides`), from the side
    candidates of its evidence step (:mod:`handfit.detect.evidence`, run before the fit).
    -> new items"""
    from .side import resolve_sides

    device, _ = _device(opts)
    dets = resolve_sides([(it.K, it.detection) for it in items], opts, res, device, opts.side_check_below,
                         opts.side_check_iters)
    return [replace(it, detection=d) for it, d in zip(items, dets)]


def keypoint_fit(side: str, items: list, opts: FitOptions, res: Resources, progress: ProgressFn | None = None,
                 start: dict | None = None) -> SideFit:
    """Stages 2 and 3 for B photos' hands of one side: initialise, check each start
    (:func:`.starts.checked_starts`), then the keypoint stage.
    ``start``: params (dict of (B,·) tensors) to start from instead of the initialiser's; they
    are checked like any start."""
    from .init import initialise
    from .keypoint import fit_keypoints
    from .starts import checked_starts

    device, dtype = _device(opts)
    model = res.model(opts.model, side, opts.mano, device, dtype)
    batch = to_batch(items, device, dtype, opts)
    t0 = time.perf_counter()
    B = len(items)
    if start is None:
        params, method = initialise(model, batch.world, batch.kp2d, batch.K, res.regressor(model, device, dtype))
    else:
        params, method = {k: v.to(device=device, dtype=dtype).clone() for k, v in start.items()}, "given"
    with torch.no_grad():
        init_err = (project(model(**params).keypoints, batch.K) - batch.kp2d).norm(dim=-1).mean(-1)
    params, methods, start_err = checked_starts(model, params, batch, opts.keypoint, opts.start, [method] * B)
    report = fit_keypoints(model, params, batch, opts.keypoint,
                           on_step=(lambda it, loss: progress("keypoints", side, it, opts.keypoint.iters))
                           if progress else None)
    fit = SideFit(side, model, list(items), batch, params, methods,
                  losses={"keypoint": dict(report.terms)},
                  metrics={"init_kp2d_px": init_err, "start_rel": start_err, "keypoint_iters": report.iters})
    fit.metrics["keypoint_seconds"] = (time.perf_counter() - t0) / B
    fit.seconds = np.full(B, fit.metrics["keypoint_seconds"])
    return fit


def dense_fit(fit: SideFit, opts: FitOptions, res: Resources, progress: ProgressFn | None = None,
              texture: np.ndarray | None = None, start: dict | None = None) -> SideFit:
    """Stage 4: the dense stage's geometry and texture phases (``fit.params`` updated in place).
    Every hand needs its photo (``item.rgb``). A track's frames (``fit.track``) keep its shape.
    ``texture``: (T,T,3) uint8, one texture every hand renders, fixed (a video track's,
    :func:`track_texture`); then only the geometry and each hand's light are fitted, and
    ``fit.textures`` is that array for every hand.
    ``start``: params (dict of (B,·) tensors) the dense stage starts from instead of the
    keypoint fit, which its anchor and depth terms still hold it near (None: the keypoint fit)."""
    from .dense import fit_dense, iteration_caps

    model, batch, params = fit.model, fit.batch, fit.params
    device, dtype = batch.K.device, batch.K.dtype
    with torch.no_grad():  # the keypoint fit, kept for comparisons (handfit eval --compare)
        kp3d = model(**params).keypoints
        fit.stages["keypoint"] = {"keypoints_3d": kp3d.double().cpu().numpy(),
                                  "keypoints_2d": project(kp3d, batch.K).double().cpu().numpy()}
    reference = {"global_orient": params["global_orient"], "pose": params["pose"], "keypoints": kp3d}
    if start is not None:
        params.update({k: v.to(device=device, dtype=dtype) for k, v in start.items()})
    steps = sum(iteration_caps(opts.dense, opts.crop_size, given_texture=texture is not None))
    given = None if texture is None else (torch.as_tensor(texture, device=device).to(dtype) / 255)[None].expand(
        len(fit.items), -1, -1, -1)
    report, tex = fit_dense(
        model, params, batch, [it.rgb for it in fit.items], opts,
        texture_prior=res.texture_prior(opts.texture_prior, opts.model, device, dtype),
        context=res.render_context(device, opts.renderer),
        on_step=(lambda it, loss: progress("dense", fit.side, it, steps)) if progress else None,
        freeze=("shape",) if fit.track else (), reference=reference, texture=given)
    fit.textures = ([texture] * len(fit.items) if texture is not None
                    else [(t.detach().cpu().numpy() * 255 + 0.5).astype(np.uint8) for t in tex])
    fit.losses["dense"] = dict(report.terms)
    fit.metrics.update(report.metrics)
    return fit


def assemble(fit: SideFit, texture_size: int = 256, quality: QualityStage | None = None) -> list:
    """Stage 5: the B hands' :class:`HandResult` objects (numpy, full-photo coordinates), each
    with its quality signals in ``metrics`` and its verdict (:mod:`.quality`, thresholds
    ``quality``; None: the defaults)."""
    from .quality import signals, verdict

    quality = quality or QualityStage()
    model, batch, params = fit.model, fit.batch, fit.params
    with torch.no_grad():
        out = model(**params)
        uv = project(out.keypoints, batch.K)
        err = (uv - batch.kp2d).norm(dim=-1).mean(-1)
    textures = fit.textures or [flat_texture(texture_size)] * len(fit.items)
    faces, uv_coords, uv_faces = (model.faces.cpu().numpy(), model.uv_coords.double().cpu().numpy(),
                                  model.uv_faces.cpu().numpy())
    seconds = fit.seconds if fit.seconds is not None else np.zeros(len(fit.items))

    def one(v, b):
        if torch.is_tensor(v):
            return float(v[b]) if v.dim() else float(v)
        if isinstance(v, (list, np.ndarray)):
            return v[b].item() if isinstance(v[b], np.generic) else v[b]
        return v

    lower, upper = model.pose_lower.double().cpu().numpy(), model.pose_upper.double().cpu().numpy()
    pose = params["pose"].detach().double().cpu().numpy()
    results = []
    for b, item in enumerate(fit.items):
        det = item.detection
        metrics = {k: one(v, b) for k, v in fit.metrics.items() if k == "init_kp2d_px"}
        metrics["kp2d_px"] = float(err[b])
        metrics.update({k: one(v, b) for k, v in fit.metrics.items() if k != "init_kp2d_px"})
        sig = signals(uv[b].double().cpu().numpy(), det.keypoints, pose[b], lower, upper, det,
                      metrics.get("start_rel"), out.keypoints[b].double().cpu().numpy())
        metrics.update(sig)
        conflict = fit.track and getattr(det, "detector_side", None) not in (None, fit.side)
        verdict_, reasons = verdict(sig, quality, side_conflict=conflict)
        results.append(HandResult(
            side=fit.side, score=float(det.score), bbox_xyxy=np.asarray(det.box_xyxy, np.float64),
            keypoints_2d_detected=np.asarray(det.keypoints, np.float64),
            keypoints_2d_fitted=uv[b].double().cpu().numpy(),
            keypoints_3d=out.keypoints[b].double().cpu().numpy(),
            world_landmarks=np.asarray(det.world, np.float64),
            params=model.export_params({k: v[b:b + 1] for k, v in params.items()}),
            vertices=out.vertices[b].double().cpu().numpy(), faces=faces, uv_coords=uv_coords, uv_faces=uv_faces,
            texture=textures[b], init=fit.init[b],
            losses={s: {k: float(v[b]) for k, v in terms.items()} for s, terms in fit.losses.items()},
            metrics=metrics, seconds=float(seconds[b]),
            detect_pass=getattr(det, "pass_name", "full"), side_source=getattr(det, "side_source", "detector"),
            side_losses=getattr(det, "side_losses", None),
            stages={s: {k: v[b] for k, v in d.items()} for s, d in fit.stages.items()},
            quality=verdict_, quality_reasons=reasons))
    return results


def finish(fit: SideFit, opts: FitOptions, res: Resources, progress: ProgressFn | None = None,
           texture: np.ndarray | None = None, start: dict | None = None) -> list:
    """Stages 4 and 5: the dense stage (when enabled and every hand has its photo), then
    :func:`assemble`. Its time is added to each hand's ``seconds``.
    ``texture``: a video track's texture (T,T,3) uint8 (:func:`track_texture`), which every
    hand's dense stage renders, fixed, fitting its geometry (the track's shape kept) and
    light; every result's ``texture`` is then that same array. None: each hand's own.
    ``start``: where the dense stage starts instead of the keypoint fit (:func:`dense_fit`)."""
    t0 = time.perf_counter()
    if opts.dense.enabled and all(it.rgb is not None for it in fit.items):
        dense_fit(fit, opts, res, progress, texture=texture, start=start)
    share = (time.perf_counter() - t0) / len(fit.items)
    fit.seconds = share + (fit.seconds if fit.seconds is not None else np.zeros(len(fit.items)))
    return assemble(fit, opts.texture_size, opts.quality)


def observe_track(fit: SideFit, opts: FitOptions, res: Resources, acc: tuple | None = None) -> tuple:
    """Stage 4a for a video track: what B of its frames (each item with its ``rgb``) show of
    its texture, on their keypoint-fit meshes, added to the running accumulation ``acc``
    (a frame further than ``opts.track.texture_rel`` box sides from its evidence adds nothing)
    (None at the first frames). Frames can come one at a time, in any order: the
    result is the same (:func:`handfit.texture.track.accumulate`). Each frame's share
    of the time is added to ``fit.seconds``.
    -> acc: (colour (T,T,3) in [0,1], weight (T,T,1)) tensors"""
    from ..texture.track import merge

    return merge(acc, *observe_frames(fit, opts, res))


def observe_frames(fit: SideFit, opts: FitOptions, res: Resources) -> tuple:
    """What each of B frames shows of the track's texture (:func:`observe_track` before the
    merge). -> colour (B,T,T,3), weight (B,T,T,1)"""
    from .dense import observe_texture
    from .starts import frame_error

    t0 = time.perf_counter()
    batch = fit.batch
    colour, weight = observe_texture(fit.model, fit.params, batch, [it.rgb for it in fit.items], opts,
                                     context=res.render_context(batch.K.device, opts.renderer))
    # a frame whose fit is still off its evidence would paint its fingers where they are not
    off = frame_error(fit.model, fit.params, batch) > opts.track.texture_rel
    weight = weight * (~off).to(weight.dtype)[:, None, None, None]
    if fit.seconds is not None:
        fit.seconds = fit.seconds + (time.perf_counter() - t0) / len(fit.items)
    return colour, weight


def track_texture(acc: tuple, opts: FitOptions, res: Resources) -> np.ndarray:
    """Stage 4b: a track's texture (T,T,3) uint8 from its accumulation (:func:`observe_track`);
    texels no frame showed come from the learned texture prior (``opts.texture_prior``)."""
    from ..texture.track import fill_track

    colour, weight = acc
    prior = res.texture_prior(opts.texture_prior, opts.model, colour.device, colour.dtype)
    with torch.no_grad():
        tex = fill_track(colour, weight, prior)
    return (tex.cpu().numpy() * 255 + 0.5).astype(np.uint8)


class TrackFinish:
    """Stages 4-5 for the T frames of one track (a :func:`fit_track` result), fed its frames'
    photos in two passes, one frame at a time in any order, so that a video need not be held:

    1. :meth:`observe` every frame: what it shows of the track's texture, accumulated
       (:func:`observe_track`); then :meth:`texture`: the track's one texture (:func:`track_texture`);
    2. :meth:`dense` every frame: its dense stage against that texture (the track's shape
       kept; :func:`dense_fit` with ``texture``, ``opts.track.dense_iters`` and
       ``dense_fine_iters`` iterations on crops ``opts.track.dense_crop`` pixels a side);
    3. :meth:`results`: all frames settled together (:func:`settle`; ``opts.track.smooth`` 0:
       not), then assembled. -> T HandResult in frame order, each ``texture`` the track's.

    Frames are processed in chunks of ``opts.track.chunk`` consecutive frames of the track
    (frames 0-15, 16-31, ...), each once all its photos have come, so that any caller (a
    video streamed from disk, ``handfit eval --sequence`` holding its photos) gets the same
    numbers. Complete chunks run side by side on :mod:`handfit.parallel`'s threads (their
    observations merged in chunk order, so the numbers do not depend on it); at most
    :func:`~handfit.parallel.workers` chunks' photos are held beyond the one being filled.
    With ``opts.dense.enabled`` False no pass is needed: :meth:`results` gives the keypoint
    fits with the flat texture (:func:`finish`)."""

    def __init__(self, fit: SideFit, opts: FitOptions, res: Resources, progress: ProgressFn | None = None,
                 keep_observations: bool = False):
        self.fit, self.opts, self.res, self.progress = fit, opts, res, progress
        T, n = len(fit.items), opts.track.chunk
        self.dense_on = bool(opts.dense.enabled)
        self.chunks = [list(range(i, min(T, i + n))) for i in range(0, T, n)]
        self.chunk_of = {b: k for k, idx in enumerate(self.chunks) for b in idx}
        if fit.seconds is None:
            fit.seconds = np.zeros(T)
        # the track's shape and texture are known and its frames start smooth: a short dense stage
        t = opts.track
        small = ({"geometry_downsample": 1, "margin": max(1, round(opts.dense.margin * t.dense_crop / opts.crop_size))}
                 if t.dense_crop else {})
        self.dense_opts = replace(opts, crop_size=t.dense_crop or opts.crop_size,
                                  dense=replace(opts.dense, iters=t.dense_iters, fine_iters=t.dense_fine_iters, **small))
        self.acc, self.tex = None, None
        self.parts: dict = {}                       # chunk -> its SideFit after the dense stage
        self._held = {"observe": {}, "dense": {}}   # pass -> {frame: rgb} of chunks not yet complete
        self._running: dict = {}                    # chunk -> Future of its observations or dense stage
        self._seen: dict = {}                       # chunk -> its observations, until merged in order
        self._merged = 0                            # chunks merged into acc so far
        # chunk -> its observations, kept for leave_one_out (handfit eval): they grow with the track
        self.kept: dict | None = {} if keep_observations else None

    def _arrive(self, what: str, b: int, rgb: np.ndarray):
        """Hold frame b's photo; -> the chunk's SideFit with its photos once all have come, else None."""
        k = self.chunk_of[b]
        held = self._held[what].setdefault(k, {})
        held[b] = rgb
        idx = self.chunks[k]
        if len(held) < len(idx):
            return None
        del self._held[what][k]
        part = self.fit.select(idx)
        part.items = [replace(it, rgb=held[i]) for it, i in zip(part.items, idx)]
        return k, part

    def _start(self, k: int, fn, *args) -> None:
        """Run chunk k's ``fn(*args)`` on a worker thread, once fewer than
        :func:`~handfit.parallel.workers` chunks are running (bounding the photos held)."""
        from ..parallel import submit, workers

        while len(self._running) >= workers():
            self._collect(next(iter(self._running)))
        self._running[k] = submit(fn, *args)

    def _collect(self, k: int) -> None:
        """Wait for chunk k's work (its errors raised here, in the caller's thread) and keep its result:
        pass 1's observations merged in chunk order, as they come; pass 2's SideFit."""
        from ..texture.track import merge

        out = self._running.pop(k).result()
        if self.tex is not None:
            self.parts[k] = out
            return
        self._seen[k] = out
        if self.kept is not None:
            self.kept[k] = out
        while self._merged in self._seen:
            self.acc = merge(self.acc, *self._seen.pop(self._merged))
            self._merged += 1

    def _drain(self) -> None:
        while self._running:
            self._collect(next(iter(self._running)))

    def observe(self, b: int, rgb: np.ndarray) -> None:
        """Pass 1: frame b's photo (H,W,3) uint8."""
        got = self._arrive("observe", b, rgb)
        if got is not None:
            self._start(got[0], self._observe_chunk, *got)

    def _observe_chunk(self, k: int, part: SideFit) -> tuple:
        colour_weight = observe_frames(part, self.opts, self.res)
        self.fit.seconds[self.chunks[k]] = part.seconds
        return colour_weight

    def texture(self) -> np.ndarray:
        """After pass 1: the track's texture (T,T,3) uint8."""
        self._drain()
        t0 = time.perf_counter()
        self.tex = track_texture(self.acc, self.opts, self.res)
        self.fit.seconds = self.fit.seconds + (time.perf_counter() - t0) / len(self.fit.items)
        return self.tex

    def leave_one_out(self) -> list[np.ndarray]:
        """After :meth:`texture`, with ``keep_observations``: per frame b the track's texture
        (T,T,3) uint8 built as :meth:`texture` without frame b's observation, to measure how
        well a track's texture predicts a frame it was not painted from (``handfit eval``)."""
        from ..texture.track import accumulate

        if self.kept is None:
            raise RuntimeError("TrackFinish.leave_one_out needs keep_observations=True")
        self._drain()
        colour = torch.cat([self.kept[k][0] for k in range(len(self.chunks))])
        weight = torch.cat([self.kept[k][1] for k in range(len(self.chunks))])
        others = ~torch.eye(len(colour), dtype=torch.bool)
        return [track_texture(accumulate(colour[keep], weight[keep]), self.opts, self.res) for keep in others]

    def dense(self, b: int, rgb: np.ndarray) -> None:
        """Pass 2: frame b's photo again (after :meth:`texture`)."""
        got = self._arrive("dense", b, rgb)
        if got is not None:
            self._start(got[0], self._dense_chunk, got[1])

    def _dense_chunk(self, part: SideFit) -> SideFit:
        t0 = time.perf_counter()
        dense_fit(part, self.dense_opts, self.res, self.progress, texture=self.tex)
        part.seconds = part.seconds + (time.perf_counter() - t0) / len(part.items)
        part.items = [replace(it, rgb=None) for it in part.items]   # the photos are not kept
        return part

    def results(self) -> list[HandResult]:
        """The T frames' HandResults, settled and assembled, in frame order."""
        if not self.dense_on:
            return finish(self.fit, self.opts, self.res, self.progress)
        self._drain()
        parts = [self.parts[k] for k in range(len(self.chunks))]
        settle(self.fit, parts, self.opts)
        return [hand for part in parts for hand in assemble(part, self.opts.texture_size, self.opts.quality)]


def finish_track(fit: SideFit, opts: FitOptions, res: Resources, progress: ProgressFn | None = None,
                 leave_one_out: bool = False):
    """Stages 4-5 for the T frames of one track whose items hold their photos: :class:`TrackFinish`
    fed every frame in each pass. -> T HandResult in frame order; with ``leave_one_out``,
    (those, per frame the track's texture without it (:meth:`TrackFinish.leave_one_out`), or
    None without the dense stage)."""
    done = TrackFinish(fit, opts, res, progress, keep_observations=leave_one_out)
    loo = None
    if done.dense_on and all(it.rgb is not None for it in fit.items):
        for b, it in enumerate(fit.items):
            done.observe(b, it.rgb)
        done.texture()
        if leave_one_out:
            loo = done.leave_one_out()
        for b, it in enumerate(fit.items):
            done.dense(b, it.rgb)
    else:
        done.dense_on = False
    return (done.results(), loo) if leave_one_out else done.results()


@one_torch_thread()
def settle(fit: SideFit, parts: list, opts: FitOptions) -> None:
    """Stage 4c for a track: its frames' dense results (``parts``: the SideFits of
    consecutive chunks of ``fit``'s frames, in order) refined together so that their
    joints' accelerations are consistent across frames (:func:`.temporal.settle_track`);
    each part's ``params`` replaced, its ``seconds`` charged its share. The dense stage
    fits each frame alone, so what it changes is not consistent from frame to frame."""
    from .temporal import settle_track

    t0 = time.perf_counter()
    params = {k: torch.cat([p.params[k] for p in parts]) for k in fit.params}
    report = settle_track(fit.model, params, fit.batch, opts.keypoint, opts.track)
    start, share = 0, (time.perf_counter() - t0) / len(fit.items)
    for part in parts:
        n = len(part.items)
        part.params = {k: v[start:start + n] for k, v in params.items()}
        if report["iters"]:
            part.losses["settle"] = {k: v[start:start + n] for k, v in report["terms"].items()}
            part.metrics["settle_iters"] = report["iters"]
        part.seconds = part.seconds + share
        start += n


# -- entry points ---------------------------------------------------------------------------------


def fit_side(side: str, items: list, opts: FitOptions, res: Resources, progress: ProgressFn | None = None) -> list:
    """Every stage after the side decision for B hands of one side. -> B HandResult, in order."""
    return finish(keypoint_fit(side, items, opts, res, progress), opts, res, progress)


def fit_hands(items: list, opts: FitOptions, res: Resources, progress: ProgressFn | None = None) -> list:
    """The whole pipeline for detected hands of any photos. items: :class:`HandItem` list.

    -> one :class:`HandResult` per item, in the items' order (a side may have changed)."""
    items = decide_sides(items, opts, res)
    out: list = [None] * len(items)
    for side in SIDE_ORDER:
        idx = [i for i, it in enumerate(items) if it.detection.side == side]
        if idx:
            for i, hand in zip(idx, fit_side(side, [items[i] for i in idx], opts, res, progress)):
                out[i] = hand
    return out


@one_torch_thread()
def fit_track(items: list, opts: FitOptions, res: Resources) -> SideFit:
    """Stages 1-3 for the T frames of one tracked hand (items in frame order, photos not needed).

    Side decision once for the whole track (:func:`.side.resolve_track_side`); frames
    MediaPipe called the other side take the evidence of the views that called them the
    track's side (:func:`.side.track_evidence`); then
    :func:`.temporal.fit_sequence`: the first frame initialised and fitted in full, each
    later frame warm-started from the one before, then all frames refined together with
    one shape and temporal terms (``opts.track``: :class:`~handfit.options.TrackStage`). Finish the frames with :func:`finish_track` (one texture for the track) or
    :func:`finish` (a texture per frame); the dense stage needs their photos."""
    from .init import initialise
    from .side import resolve_track_side, track_evidence
    from .temporal import fit_sequence

    device, dtype = _device(opts)
    dets = resolve_track_side([(it.K, it.detection) for it in items], opts, res, device, opts.side_check_below,
                              opts.side_check_iters)
    side = dets[0].side
    # frames called the other side: the evidence of the views that called them the track's side
    dets = track_evidence(dets, [it.detection for it in items], side)
    items = [replace(it, detection=d) for it, d in zip(items, dets)]
    model = res.model(opts.model, side, opts.mano, device, dtype)
    batch = to_batch(items, device, dtype, opts)
    t0 = time.perf_counter()
    net = res.regressor(model, device, dtype)
    params, methods, report = fit_sequence(model, batch, opts.keypoint, opts.track,
                                           lambda b: initialise(model, b.world, b.kp2d, b.K, net), opts.start)
    T = len(items)
    fit = SideFit(side, model, items, batch, params, methods,
                  losses={"keypoint": report["terms"]},
                  metrics={"keypoint_iters": report["warm_iters"], "refine_iters": report["refine_iters"],
                           "track_refit": report["refit"], "track_released": report["released"]},
                  track=True)
    fit.seconds = np.full(T, (time.perf_counter() - t0) / T)
    return fit
