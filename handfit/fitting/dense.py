"""The dense stage: the rendered hand against the photo (texture as a supervisory cue).

After the keypoint stage, each hand is cropped to a ``S×S`` window with its
own intrinsics (handfit/fitting/scene.py). The textured, SH-lit mesh is
rendered with the differentiable rasterizer over the photo and compared with
it pixel by pixel, jointly optimising pose, shape, translation, the UV
texture and the lighting:

    photometric (robust L1 over the hand and a margin) + image-gradient term
  + silhouette (antialiased coverage vs a colour-model hand mask of the photo)
  + 2D keypoints (lower weight than in the keypoint stage)
  + pose limits, pose and shape regularisers
  + texture total variation and a prior pulling unseen texels to the fill.

It runs in two phases:

1. **Geometry**: pose, shape, translation, the lighting and a *coarse* albedo
   (``texture_detail`` texels a side, initialised from the photo unwrapped onto
   the keypoint-fit mesh) against all terms above. The albedo is kept coarse
   on purpose: a free full-resolution texture re-paints the photo onto a
   misaligned mesh and so explains the misalignment away (on the synthetic
   benchmark a free texture kept only a third of the geometric gain that a
   fixed correct one gave; see docs/fitting.md).
2. **Texture**: with the geometry fixed (rasterized once), the ``T×T`` UV
   texture and the lighting are fitted to the photo. The texture starts from
   the photo unwrapped onto the final mesh and divided by the fitted shading
   (grazing angles, silhouette pixels and non-skin colours left out); unseen
   texels take the learned texture prior's prediction from those samples
   (handfit/texture/fill.py), or, without a prior, the coarse albedo, and the
   prior term holds them there.

A video track's frames run it with one texture given for the whole track
(``fit_dense(texture=...)``, built by handfit/texture/track.py from all its
frames, :func:`observe_texture`): the geometry phase renders that texture,
fixed, in place of the coarse albedo (the light is still fitted per frame),
and the texture phase is skipped.

This module is the driver, :func:`fit_dense`, its two phases
(:func:`geometry_phase`, :func:`texture_phase`) and the loss terms of each
phase; the geometry phase's appearance models (coarse albedo, the prior's
albedo, a given texture) are in handfit/fitting/appearance.py. Its pieces live elsewhere: the crop scene in
handfit/fitting/scene.py, the photo's hand mask and the image-term regions
in handfit/fitting/photo_mask.py, the initial textures and the prior's
albedo in handfit/texture/init.py.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .. import render as R
from ..camera import project
from ..options import DenseStage, FitOptions
from ..texture.init import coarse, initial_texture, prior_texture, resize_texture
from ..texture.track import fill_track, frame_observation
from ..texture.unwrap import fill_push_pull
from . import losses as L
from .adam import LinearSchedule, run_adam
from .appearance import CoarseAlbedo, GivenTexture, choose_appearance
from .hands import HandBatch
from .photo_mask import confident, image_region, iou, photo_hand_mask
from .scene import CropScene, ambient_sh


# -- loss terms ----------------------------------------------------------------------------------------


def photometric_error(scene: CropScene, g: R.MeshBuffers, tex, sh) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute colour error (0..1 per channel) inside the rendered hand mask
    of the buffers ``g`` (:meth:`CropScene.rasterize`), and that mask. -> ((B,), (B,S,S) bool)"""
    with torch.no_grad():
        out = scene.shade(g, tex, sh, antialias=False)
        m = (out["cover"] > 0.5) & scene.valid
        err = (out["rgb"] - scene.target).abs().mean(-1)
        return (err * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1), m


def geometry_terms(model, scene: CropScene, batch: HandBatch, skin_p, sh0, stage: DenseStage,
                   start: dict | None = None, appearance=None):
    """``terms(p) -> dict of (B,)`` for the geometry phase; p holds
    global_orient, pose, shape, transl, sh (B,9,3) and, for the coarse albedo,
    texture (B,d,d,3).

    batch: the B hands' K (B,3,3), detected kp2d (B,21,2), box sides scale (B,)
    and 2D weights kp_weight (B,21) or None, all in full-photo pixels.
    skin_p (B,S,S): the photo's soft hand mask; sh0 (B,9,3) the initial light;
    start: the keypoint stage's global_orient (B,3) and pose (B,P), which the
    ``anchor`` term holds the fit near, and its keypoints (B,21,3), whose
    relative depths the ``depth`` term holds and, with ``trust_target``
    "keypoint_fit", whose projections the ``kp_trust`` hinge holds (None: none of that).
    appearance: the albedo model (:func:`choose_appearance`; None: :class:`CoarseAlbedo`).
    """
    w = stage.weights
    appearance = appearance or CoarseAlbedo()
    K_full, kp2d_full, scale, kp_weight = batch.K, batch.kp2d, batch.scale, batch.kp_weight
    validf = scene.valid.to(scene.target.dtype)
    sure = confident(skin_p, stage)
    trust_2d = kp2d_full
    if stage.trust_target == "keypoint_fit" and start is not None and "keypoints" in start:
        trust_2d = project(start["keypoints"], K_full).detach()

    def terms(p):
        out_m = model(p["global_orient"], p["pose"], p["shape"], p["transl"])
        tex = appearance(out_m.vertices, p)
        r = scene.render(out_m.vertices, tex, p["sh"])
        region = image_region(r["cover"], validf, skin_p, sure, stage)
        uv = project(out_m.keypoints, K_full)
        t = {
            "photo": w.photo * L.robust_photometric_loss(r["rgb"], scene.target, region),
            "grad": w.grad * L.gradient_loss(r["rgb"], scene.target, region),
            "silhouette": w.silhouette * L.silhouette_loss(r["coverage"], skin_p, region * sure),
            "kp2d": w.kp2d * L.keypoint_2d_loss(uv, kp2d_full, scale, kp_weight, sigma=stage.kp2d_sigma),
            "kp_trust": w.kp_trust * L.keypoint_trust_loss(uv, trust_2d, scale, stage.trust_radius),
            "pose_limit": w.pose_limit * L.pose_limit_loss(p["pose"], model.pose_lower, model.pose_upper),
            "pose_l2": w.pose_l2 * L.pose_l2_loss(p["pose"]),
            "shape": w.shape * L.shape_loss(p["shape"]),
            "sh": w.sh * (p["sh"] - sh0).square().sum((1, 2)),
        }
        if start is not None and w.anchor > 0:
            t["anchor"] = w.anchor * ((p["pose"] - start["pose"]).square().sum(-1)
                                      + (p["global_orient"] - start["global_orient"]).square().sum(-1))
        if start is not None and w.depth > 0:
            t["depth"] = w.depth * L.relative_depth_loss(out_m.keypoints, start["keypoints"])
        return t

    return terms


def texture_terms(scene: CropScene, g: R.MeshBuffers, skin_p, tex_prior, prior_w, sh0, stage: DenseStage):
    """``terms(p) -> dict of (B,)`` for the texture phase over the fixed
    geometry buffers ``g`` (:meth:`CropScene.rasterize`); p holds texture
    (B,T,T,3) and sh (B,9,3). tex_prior (B,T,T,3) and prior_w (B,T,T,1): the
    texture prior and where it applies (unseen texels)."""
    w = stage.weights
    validf = scene.valid.to(scene.target.dtype)
    region = image_region(g.cover[..., 0], validf, skin_p, confident(skin_p, stage), stage)

    def terms(p):
        tex = p["texture"].clamp(0, 1)
        r = scene.shade(g, tex, p["sh"], antialias=False)
        return {
            "photo": w.photo * L.robust_photometric_loss(r["rgb"], scene.target, region),
            "grad": w.grad * L.gradient_loss(r["rgb"], scene.target, region),
            "tex_tv": w.tex_tv * L.texture_tv_loss(tex),
            "tex_prior": w.tex_prior * L.texture_prior_loss(tex, tex_prior, prior_w),
            "sh": w.sh * (p["sh"] - sh0).square().sum((1, 2)),
        }

    return terms


# -- the scene -----------------------------------------------------------------------------------------


def photo_scene(model, params: dict, batch: HandBatch, photos, opts: FitOptions, context=None):
    """The dense stage's start for the B hands of ``batch``: the crops around the mesh of
    ``params`` (:meth:`CropScene.from_photos`, ``opts.crop_size`` and ``opts.dense.crop_scale``),
    that mesh, its buffers and the photo's hand mask (seeded by the detected ``batch.kp2d``).

    photos: B (H,W,3) uint8 arrays; context: the rasterizer state for the device
    (:func:`handfit.render.make_context`), None on the CPU.
    -> (scene, model output, MeshBuffers with points (B,S,S,·), hand mask (B,S,S) in [0,1])"""
    stage = opts.dense
    dev, dt = params["pose"].device, params["pose"].dtype
    with torch.no_grad():
        out0 = model(**params)
        kp_fit = project(out0.keypoints, batch.K)
    scene = CropScene.from_photos(model, batch.K, photos, kp_fit, opts.crop_size, stage.crop_scale, dev, dt,
                                  opts.renderer, context)
    with torch.no_grad():
        first = scene.rasterize(out0.vertices, points=True)
        skin_p = photo_hand_mask(scene, first.cover[..., 0] > 0.5, batch.kp2d, stage.photo_mask,
                                 stage.grabcut_iters)  # (B,S,S)
    return scene, out0, first, skin_p


@torch.no_grad()
def observe_texture(model, params: dict, batch: HandBatch, photos, opts: FitOptions, context=None):
    """What B photos show of their hands' texture, on the meshes of ``params`` (a
    video track's keypoint fit), for :func:`handfit.texture.track.accumulate`:
    the crops of :func:`photo_scene`, unwrapped under ambient light and weighted by
    facing and the photo's hand mask (:func:`handfit.texture.track.frame_observation`).
    -> colour (B,T,T,3) in [0,1], weight (B,T,T,1), T = ``opts.texture_size``"""
    scene, _, g, skin_p = photo_scene(model, params, batch, photos, opts, context)
    return frame_observation(scene.target, g, scene.valid, skin_p, opts.texture_size)


# -- the phases ----------------------------------------------------------------------------------------


def geometry_factor(stage: DenseStage, crop_size: int) -> int:
    """How much the geometry phase downsamples the crops: ``geometry_downsample`` when it
    divides ``crop_size``, else 1 (and then no fine iterations follow)."""
    return stage.geometry_downsample if crop_size % stage.geometry_downsample == 0 else 1


def observed_texture(scene: CropScene, g: R.MeshBuffers, skin_p, size: int, prior=None) -> torch.Tensor:
    """The texture (B,T,T,3) in [0,1] the photo crops show on the mesh buffers ``g`` (made with
    ``points=True``): what a video track's frame adds to its texture
    (:func:`handfit.texture.track.frame_observation`: squarely seen pixels the hand mask
    ``skin_p`` (B,S,S) is sure of), then filled as a track's texture is
    (:func:`handfit.texture.track.fill_track`: push-pull towards the observed mean colour, or
    the learned ``prior``'s prediction)."""
    colour, weight = frame_observation(scene.target, g, scene.valid, skin_p, size)
    return torch.stack([fill_track(c, w, prior) for c, w in zip(colour, weight)])


def iteration_caps(stage: DenseStage, crop_size: int, given_texture: bool = False) -> tuple[int, int, int]:
    """(coarse, fine, texture) iteration caps of the dense stage's phases; their sum is
    what a progress bar counts to."""
    fine = stage.fine_iters if geometry_factor(stage, crop_size) > 1 else 0
    return stage.iters, fine, 0 if given_texture or stage.texture_from == "observed" else stage.texture_iters


def geometry_schedules(stage: DenseStage, fine_iters: int) -> tuple[LinearSchedule, LinearSchedule]:
    """The learning-rate factors of the coarse and the fine iterations. With ``one_schedule``
    one fall from 1 to ``lr_end`` over both; else constant in the coarse part (falling to
    ``lr_end`` when no fine part follows) and a fall from 1 in the fine part."""
    if not stage.one_schedule:
        return LinearSchedule(1.0, stage.lr_end if not fine_iters else 1.0), LinearSchedule(1.0, stage.lr_end)
    total = stage.iters + fine_iters

    def at(i):
        return 1.0 - (1.0 - stage.lr_end) * (i - 1) / max(total - 1, 1)

    return LinearSchedule(1.0, at(stage.iters)), LinearSchedule(at(stage.iters + 1), stage.lr_end)


def geometry_phase(model, params: dict, scene: CropScene, skin_p, batch: HandBatch, stage: DenseStage,
                   appearance, start: dict, state: dict, sh0, freeze: tuple = (), on_step=None):
    """Phase 1: pose, shape, translation, light (and a learning appearance's albedo) against
    the photo, ``stage.iters`` iterations on crops downsampled by :func:`geometry_factor`,
    then ``fine_iters`` at full size continuing the same Adam and schedule.
    ``state``: the optimised tensors (params, ``sh`` and ``texture``), updated in place;
    sh0 (B,9,3): the light the ``sh`` term holds near; ``freeze``: parameters kept fixed.
    ``appearance``: from :func:`choose_appearance`. -> (StageReport, the appearance model of the
    last iterations)"""
    f = geometry_factor(stage, scene.target.shape[1])
    gscene = scene.downsampled(f)
    gskin = skin_p if f == 1 else F.avg_pool2d(skin_p[:, None], f)[:, 0]
    gstage = stage if f == 1 else replace(stage, margin=max(1, round(stage.margin / f)))
    lrs = {"global_orient": stage.lr_orient, "pose": stage.lr_pose, "shape": stage.lr_shape,
           "transl": stage.lr_transl, "texture": stage.lr_texture, "sh": stage.lr_light}
    for k in freeze:
        lrs.pop(k, None)
    if not appearance.learns:
        del lrs["texture"]
    _, fine_iters, _ = iteration_caps(stage, scene.target.shape[1])
    appearance = appearance.on(gscene, gskin)
    coarse_sched, fine_sched = geometry_schedules(stage, fine_iters)
    eps = {"pose": stage.adam_eps, "global_orient": stage.adam_eps_orient, "shape": stage.adam_eps_shape,
           "transl": stage.adam_eps_transl}
    terms = geometry_terms(model, gscene, batch, gskin, sh0, gstage, start, appearance)
    report = run_adam(state, lrs, terms, max_iters=stage.iters, tol=stage.tol, patience=stage.patience,
                      on_step=on_step, schedule=coarse_sched, eps=eps)
    if fine_iters:  # coarse to fine: the rest at the full size
        appearance = appearance.on(scene, skin_p)
        fine = geometry_terms(model, scene, batch, skin_p, sh0, stage, start, appearance)
        coarse_iters = report.iters
        fine_report = run_adam(state, lrs, fine, max_iters=fine_iters, tol=stage.tol, patience=stage.patience,
                               on_step=None if on_step is None else (lambda it, t: on_step(coarse_iters + it, t)),
                               schedule=fine_sched, eps=eps,
                               adam_state=report.adam_state if stage.fine_keeps_adam else None)
        fine_report.iters += coarse_iters
        report = fine_report
    for k in ("global_orient", "pose", "shape", "transl"):
        params[k] = state[k]
    return report, appearance


def texture_phase(model, params: dict, scene: CropScene, skin_p, stage: DenseStage, albedo, sh, texture_size: int,
                  texture_prior=None, on_step=None):
    """Phase 2: the full ``texture_size``² texture (and light) on the fixed final mesh of
    ``params``. It starts from the photo unwrapped onto that mesh and divided by the light
    ``sh`` (B,9,3); unseen texels take the prior's prediction (``texture_prior``), or the
    geometry phase's ``albedo`` (B,d,d,3) without one, and the prior term holds them there.
    -> (texture (B,T,T,3) in [0,1], light (B,9,3), StageReport, the mesh's MeshBuffers)"""
    with torch.no_grad():
        v1 = model(**params).vertices
        g = scene.rasterize(v1, points=True)
    tex_prior = resize_texture(albedo, texture_size)
    if texture_prior is not None:  # the learned prior's texture, from this mesh's samples, replaces it
        tex_prior = prior_texture(texture_prior, scene, g, sh, skin_p, texture_size)
    tex1, conf1, _ = initial_texture(scene, v1, texture_size, skin_p, sh=sh, prior=tex_prior, g=g)
    prior_w = 1 - conf1.clamp(max=1.0)  # (B,T,T,1): 1 where unseen
    tstate = {"texture": tex1, "sh": sh.clone()}
    report = run_adam(tstate, {"texture": stage.lr_texture, "sh": stage.lr_light},
                      texture_terms(scene, g, skin_p, tex_prior, prior_w, sh, stage),
                      max_iters=stage.texture_iters, tol=stage.tol, patience=stage.patience, on_step=on_step)
    return tstate["texture"].detach().clamp(0, 1), tstate["sh"], report, g


def fit_dense(model, params: dict, batch: HandBatch, photos, opts: FitOptions, *, texture_prior=None, context=None,
              on_step=None, freeze: tuple = (), reference: dict | None = None, texture=None):
    """Run the dense stage (``opts.dense``) on the B hands of ``batch``, one model; ``params``
    is updated in place.

    batch: the hands' K (B,3,3), detected kp2d (B,21,2), box sides (B,) and 2D weights, in
    full-photo pixels; photos: B (H,W,3) uint8 arrays. ``opts`` also gives the crop and
    texture sizes and the renderer.
    ``texture_prior``: a learned TexturePrior (handfit/texture/prior.py) whose
    prediction fills the unseen texels in the texture phase; None: the coarse albedo.
    ``context``: the rasterizer state for the device (:func:`handfit.render.make_context`), None on the CPU.
    ``on_step(it, total)`` is called after every iteration of both phases.
    ``freeze``: parameters the geometry phase keeps fixed (e.g. ("shape",) for a video track's shared shape).
    ``reference``: the keypoint stage's result that the ``anchor`` and ``depth`` terms hold the
    fit near -- global_orient (B,3), pose (B,P), keypoints (B,21,3) -- or None: ``params`` as
    given. It is evidence, like the detections, and need not be where the optimisation starts.
    ``texture``: (B,T,T,3) in [0,1], a given albedo (a video track's texture,
    :mod:`handfit.texture.track`): the geometry phase renders it, fixed, instead of
    the coarse albedo (each hand's light is still fitted), and the texture phase is
    skipped. None: the photo's own texture, as above.
    -> (StageReport of the geometry phase with ``metrics``, texture (B,T,T,3) in [0,1])
    """
    stage = opts.dense
    B = params["pose"].shape[0]
    scene, out0, first, skin_p = photo_scene(model, params, batch, photos, opts, context)
    dev, dt = params["pose"].device, params["pose"].dtype
    with torch.no_grad():
        if stage.background == "inpainted":
            hole = ((skin_p > 0.5) | (first.cover[..., 0] > 0.5)).to(dt)[..., None]
            scene.background = fill_push_pull(scene.target * (1 - hole), 1 - hole)
    sh0 = ambient_sh(B, dev, dt)
    tex_sharp, _, mean_skin = initial_texture(scene, out0.vertices, opts.texture_size, skin_p, g=first)
    photo_before, mask_before = photometric_error(scene, first, mean_skin[:, None, None, :].contiguous(), sh0)
    photo_mask = (skin_p > 0.5) & scene.valid
    iou_before = iou(mask_before, photo_mask)

    start = {k: params[k].detach().clone() for k in ("global_orient", "pose")}
    start["keypoints"] = out0.keypoints
    if reference is not None:
        start.update({k: v.detach() for k, v in reference.items()})
    appearance = choose_appearance(stage, texture, texture_prior, dev, dt)
    state = {**params, "texture": coarse(tex_sharp, stage.texture_detail), "sh": sh0.clone()}
    report, appearance = geometry_phase(model, params, scene, skin_p, batch, stage, appearance, start, state, sh0,
                                        freeze, on_step)
    if isinstance(appearance, GivenTexture):
        with torch.no_grad():
            g = scene.rasterize(model(**params).vertices, points=True)
        tex, sh, texture_iters = appearance.texture, state["sh"].detach(), 0
    elif stage.texture_from == "observed":
        with torch.no_grad():
            g = scene.rasterize(model(**params).vertices, points=True)
            tex = observed_texture(scene, g, skin_p, opts.texture_size,
                                   texture_prior if stage.texture_fill == "prior" else None)
        sh, texture_iters = sh0, 0   # the photo's own colours, shading and all: no light of its own
    else:
        done = report.iters
        tex, sh, tex_report, g = texture_phase(
            model, params, scene, skin_p, stage, appearance.albedo(state), state["sh"].detach(),
            opts.texture_size, texture_prior, None if on_step is None else (lambda it, t: on_step(done + it, t)))
        report.terms.update({k: v for k, v in tex_report.terms.items() if k.startswith("tex_")})
        texture_iters = tex_report.iters
    photo_after, mask_after = photometric_error(scene, g, tex, sh)
    report.metrics = {
        "photometric_before": photo_before, "photometric_after": photo_after,
        "silhouette_iou_before": iou_before, "silhouette_iou_after": iou(mask_after, photo_mask),
        "dense_iters": report.iters, "texture_iters": texture_iters,
    }
    return report, tex
