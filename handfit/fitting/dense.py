"""The dense rendered-appearance stage (texture as a supervisory cue).

After the keypoint stage, each hand is cropped to a ``S×S`` window with its
own intrinsics. The textured, SH-lit mesh is rendered with the differentiable
rasterizer over the photo and compared with it pixel by pixel, jointly
optimising pose, shape, translation, the UV texture and the lighting:

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
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import render as R
from ..camera import crop_image, crop_intrinsics, project, square_crop, to_crop
from ..render.shading import sh_lights, sh_shading
from .photo_mask import dilate, hand_probability, hand_probability_grabcut
from ..texture.fill import prior_fill
from ..texture.unwrap import fill_push_pull, splat, unwrap
from ..options import DenseStage
from . import losses as L
from .adam import run_adam


def ambient_sh(batch: int, device, dtype) -> torch.Tensor:
    """SH coefficients (B,9,3) giving shading 1 in every direction, so that
    rendered colour = texture: the unwrapped photo reproduces itself."""
    return sh_lights(1.0, (), (), batch, device, dtype)


def hand_side_of_wrist(kp: np.ndarray, size: int, slack: float = 0.1) -> np.ndarray:
    """(S,S) bool: pixels on the hand's side of the line through the wrist
    perpendicular to wrist -> middle MCP, moved ``slack`` palm lengths towards
    the arm. The mesh is cut at the wrist while the photo's skin goes on up
    the forearm; without this the silhouette and colour terms drag the wrist
    along the arm.  kp: (21,2) crop pixels.
    """
    d = kp[9] - kp[0]
    palm = max(float(np.linalg.norm(d)), 1e-6)
    d = d / palm
    yy, xx = np.mgrid[0:size, 0:size]
    along = (xx - kp[0, 0]) * d[0] + (yy - kp[0, 1]) * d[1]
    return along >= -slack * palm


class CropScene:
    """Everything fixed during the dense stage for B hands of one model: the
    crops of the photo (targets), their validity masks and intrinsics, the
    renderer backend (resolved once) and the mesh's antialiasing topology."""

    def __init__(self, model, target, valid, K, backend="auto", crops=None):
        """target (B,S,S,3) in [0,1]; valid (B,S,S) bool, the pixels the image
        terms may use; K (B,3,3) crop intrinsics."""
        dev, dt = target.device, target.dtype
        self.model, self.crops = model, crops
        self.backend = R.pick_backend(backend, target)
        self.faces = model.faces.to(device=dev, dtype=torch.int32)
        self.uv_faces = model.uv_faces.to(device=dev, dtype=torch.int32)
        self.uv_coords = model.uv_coords.to(device=dev, dtype=dt)
        self.topology = R.make_topology(self.faces, self.backend)
        self.target, self.valid, self.K = target, valid, K
        self.background = target  # what the render is composited over (DenseStage.background)
        self.res = tuple(target.shape[1:3])

    @classmethod
    def from_photos(cls, model, K_full, photos, kp2d_full, crop_size, crop_scale, device, dtype, backend="auto"):
        """Square crops around each hand's fitted keypoints.

        K_full (B,3,3); photos: B (H,W,3) uint8 arrays; kp2d_full (B,21,2) pixels.
        """
        crops, imgs, valid, Ks = [], [], [], []
        kp = kp2d_full.detach().cpu().numpy()
        for b, rgb in enumerate(photos):
            c = square_crop(np.concatenate([kp[b].min(0), kp[b].max(0)]), scale=crop_scale, out_size=crop_size)
            img, ok = crop_image(rgb, c)
            crops.append(c)
            imgs.append(torch.from_numpy(np.ascontiguousarray(img)).float() / 255)
            valid.append(torch.from_numpy(np.ascontiguousarray(ok)).bool())
            Ks.append(torch.as_tensor(crop_intrinsics(K_full[b].detach().cpu().numpy(), c)))
            valid[-1] &= torch.from_numpy(hand_side_of_wrist(to_crop(kp[b], c), crop_size))
        return cls(model, torch.stack(imgs).to(device=device, dtype=dtype), torch.stack(valid).to(device),
                   torch.stack(Ks).to(device=device, dtype=dtype), backend, crops)

    def rasterize(self, vertices, points: bool = False) -> R.MeshBuffers:
        """vertices (B,V,3) camera frame -> the mesh's buffers in the crops (:class:`~handfit.render.MeshBuffers`)."""
        return R.rasterize_mesh(vertices, self.faces, self.K, self.res, uv=self.uv_coords, uv_faces=self.uv_faces,
                                points=points, backend=self.backend, topology=self.topology)

    def shade(self, g: R.MeshBuffers, tex, sh, antialias=True) -> dict:
        """Colour the buffers ``g`` with texture (B,T,T,3) and SH light (B,9,3)
        over the background. -> dict of cover (B,S,S) (hard), coverage (B,S,S)
        (antialiased if asked), shading (B,S,S,3) and rgb (B,S,S,3)."""
        out = R.shade(g, texture=tex, sh=sh, background=self.background, antialias=antialias)
        return {"cover": g.cover[..., 0], "coverage": out["coverage"][..., 0], "shading": out["shading"],
                "rgb": out["rgb"]}

    def render(self, vertices, tex, sh, antialias=True):
        """vertices (B,V,3) camera frame -> dict of (B,S,S,·) images (see :meth:`shade`)."""
        return self.shade(self.rasterize(vertices), tex, sh, antialias)


def initial_texture(scene: CropScene, vertices, size: int, skin_p=None, sh=None, prior=None, g=None):
    """Unwrap the photo onto the mesh: its colours divided by the shading of
    light ``sh`` (B,9,3) (ambient if None) are the albedo samples. Unseen
    texels are filled towards ``prior`` (B,T',T',3) if given, else the mean.
    ``g``: the mesh's buffers from ``scene.rasterize(vertices, points=True)``, if already made.
    -> (texture (B,T,T,3), confidence (B,T,T,1), mean albedo (B,3))"""
    with torch.no_grad():
        B = vertices.shape[0]
        g = scene.rasterize(vertices, points=True) if g is None else g
        photo = scene.target
        if sh is not None:
            photo = photo / sh_shading(g.normals, sh).clamp(min=0.2)
        samples = unwrap(photo.clamp(0, 1), g.rast, g.uv, g.normals, g.points, valid=scene.valid,
                         colour_weight=skin_p)
        tex, conf = splat(samples, B, size)
        # Weighted mean of the samples, read off the splat (its bilinear weights sum to one per sample).
        total = conf.sum((1, 2))  # (B,1)
        mean = (tex * conf).sum((1, 2)) / total.clamp(min=1e-6)
        mean = torch.where(total > 0, mean, vertices.new_tensor([0.8, 0.62, 0.52]))
        filled = fill_push_pull(tex, conf, prior=mean, saturate=1.0)
        if prior is not None:  # holes take the prior instead of the push-pull fill
            up = resize_texture(prior, size)
            c = conf.clamp(max=1.0)
            filled = c * filled + (1 - c) * up
    return filled, conf, mean


def coarse(tex: torch.Tensor, detail: int) -> torch.Tensor:
    """(B,T,T,C) -> (B,d,d,C), its area average on a ``detail``-texel grid."""
    if detail >= tex.shape[1]:
        return tex
    return F.adaptive_avg_pool2d(tex.permute(0, 3, 1, 2), detail).permute(0, 2, 3, 1).contiguous()


def resize_texture(tex: torch.Tensor, size: int) -> torch.Tensor:
    """(B,t,t,C) -> (B,size,size,C), bilinear (the sampling R.texture does)."""
    if tex.shape[1] == size:
        return tex
    x = F.interpolate(tex.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous()


def photometric_error(scene: CropScene, g: R.MeshBuffers, tex, sh) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute colour error (0..1 per channel) inside the rendered hand mask
    of the buffers ``g`` (:meth:`CropScene.rasterize`), and that mask. -> ((B,), (B,S,S) bool)"""
    with torch.no_grad():
        out = scene.shade(g, tex, sh, antialias=False)
        m = (out["cover"] > 0.5) & scene.valid
        err = (out["rgb"] - scene.target).abs().mean(-1)
        return (err * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1), m


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,H,W) bool x2 -> (B,)"""
    inter = (a & b).sum((1, 2)).float()
    union = (a | b).sum((1, 2)).float().clamp(min=1)
    return inter / union


def photo_hand_mask(scene: CropScene, render_mask, kp2d_full, kind: str = "consensus") -> torch.Tensor:
    """Soft hand mask (B,S,S) of the photo crops, seeded by the mesh's render_mask (B,S,S).

    "colour": one Gaussian per class; "grabcut": colour mixtures and a graph cut,
    with the detected skeleton (kp2d_full (B,21,2)) as sure hand; "consensus":
    GrabCut's mask where the two agree and 0.5 (not used) where they do not.
    Each fails differently (the colour model on skin-coloured backgrounds,
    GrabCut on low-contrast edges), so their agreement is the reliable part.
    """
    if kind not in ("colour", "grabcut", "consensus"):
        raise ValueError(f"photo_mask must be colour, grabcut or consensus, not {kind!r}")
    if kind != "grabcut":
        colour = hand_probability(scene.target, render_mask, scene.valid)
        if kind == "colour":
            return colour
    det = kp2d_full.detach().cpu().numpy()
    skel = torch.stack([torch.as_tensor(to_crop(det[b], c)) for b, c in enumerate(scene.crops)])
    gc = hand_probability_grabcut(scene.target, render_mask, scene.valid, skel)
    if kind == "grabcut":
        return gc
    agree = (gc > 0.5) == (colour > 0.5)
    return torch.where(agree, gc, torch.full_like(gc, 0.5)) * scene.valid.to(gc.dtype)


def confident(skin_p, stage: DenseStage) -> torch.Tensor:
    """(B,S,S) 1 where the photo mask is sure either way. The mask is
    unreliable where hand and background colours overlap (skin-coloured
    backgrounds, shadows); only its confident pixels take part in the
    silhouette term."""
    return ((2 * skin_p - 1).abs() >= stage.mask_confidence).to(skin_p.dtype)


def image_region(cover, valid, skin_p, sure, stage: DenseStage):
    """(B,S,S) weights of the image terms: the rendered hand and a margin
    around it, inside the photo (plus the confident photo hand when the
    background is inpainted, so uncovered hand pixels count too)."""
    with torch.no_grad():
        region = dilate(cover, stage.margin)
        if stage.background == "inpainted":
            region = torch.maximum(region, (skin_p > 0.5).to(region.dtype) * sure)
        return region * valid


def prior_texture(net, scene: CropScene, g: R.MeshBuffers, sh, skin_p, size: int) -> torch.Tensor:
    """The learned prior's texture (B,size,size,3) from the photo divided by
    the shading of light ``sh`` (B,9,3) and unwrapped onto the mesh buffers ``g``
    (made with ``points=True``); skin_p (B,S,S) weights the samples."""
    deshaded = scene.target / sh_shading(g.normals, sh).clamp(min=0.2)
    return prior_fill(net, deshaded, g, scene.valid, skin_p, size)


class PriorAppearance:
    """The geometry phase's albedo from the learned texture prior.

    Every ``every`` calls, the photo (divided by the current shading) is
    unwrapped onto the current mesh and the prior predicts the texture from
    those samples; it is area-averaged to ``detail`` texels a side and held
    fixed (no gradient) until the next prediction. Limiting the detail keeps
    the albedo from re-painting the photo onto a misplaced mesh.
    """

    def __init__(self, net, scene: CropScene, skin_p, detail: int, every: int, size: int = 64):
        """net: a TexturePrior; skin_p (B,S,S) the photo's hand mask (sample weights)."""
        self.net, self.scene, self.skin_p = net, scene, skin_p
        self.detail, self.every, self.size = detail, every, size
        self.calls, self.texture = 0, None

    @torch.no_grad()
    def predict(self, vertices, sh) -> torch.Tensor:
        """vertices (B,V,3), sh (B,9,3) -> albedo (B,d,d,3) in [0,1]."""
        g = self.scene.rasterize(vertices, points=True)
        return coarse(prior_texture(self.net, self.scene, g, sh, self.skin_p, self.size), self.detail)

    def __call__(self, vertices, sh) -> torch.Tensor:
        """The current albedo (B,d,d,3), re-predicted every ``every`` calls."""
        if self.texture is None or self.calls % self.every == 0:
            self.texture = self.predict(vertices.detach(), sh.detach())
        self.calls += 1
        return self.texture


def geometry_terms(model, scene: CropScene, K_full, kp2d_full, scale, skin_p, sh0, stage: DenseStage,
                   start: dict | None = None, appearance: PriorAppearance | None = None):
    """``terms(p) -> dict of (B,)`` for the geometry phase; p holds
    global_orient, pose, shape, transl, texture (B,d,d,3), the coarse albedo,
    and sh (B,9,3).

    skin_p (B,S,S): the photo's soft hand mask; sh0 (B,9,3) the initial light;
    start: the keypoint stage's global_orient (B,3) and pose (B,P), which the
    ``anchor`` term holds the fit near, and its keypoints (B,21,3), whose
    relative depths the ``depth`` term holds (None: neither term).
    appearance: the prior's albedo (then p's texture is not used), or None.
    """
    w = stage.weights
    validf = scene.valid.to(scene.target.dtype)
    sure = confident(skin_p, stage)

    def terms(p):
        out_m = model(p["global_orient"], p["pose"], p["shape"], p["transl"])
        tex = p["texture"].clamp(0, 1) if appearance is None else appearance(out_m.vertices, p["sh"])
        r = scene.render(out_m.vertices, tex, p["sh"])
        region = image_region(r["cover"], validf, skin_p, sure, stage)
        uv = project(out_m.keypoints, K_full)
        t = {
            "photo": w.photo * L.robust_photometric_loss(r["rgb"], scene.target, region),
            "grad": w.grad * L.gradient_loss(r["rgb"], scene.target, region),
            "silhouette": w.silhouette * L.silhouette_loss(r["coverage"], skin_p, region * sure),
            "kp2d": w.kp2d * L.keypoint_2d_loss(uv, kp2d_full, scale, sigma=stage.kp2d_sigma),
            "kp_trust": w.kp_trust * L.keypoint_trust_loss(uv, kp2d_full, scale, stage.trust_radius),
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


def fit_appearance(model, params: dict, K_full, kp2d_full, scale, photos, stage: DenseStage, texture_size: int,
                   backend: str = "auto", crop_size: int = 256, on_step=None, texture_prior=None,
                   freeze: tuple = ()):
    """Run the dense stage on B hands of one model; ``params`` is updated in place.

    K_full (B,3,3), kp2d_full (B,21,2) detected keypoints in the full photo,
    scale (B,) box side in pixels, photos: list of B (H,W,3) uint8 arrays.
    ``on_step(it, total)`` is called after every iteration of both phases.
    ``texture_prior``: a learned TexturePrior (handfit/texture/prior.py) whose
    prediction fills the unseen texels in the texture phase; None: the coarse albedo.
    ``freeze``: parameters the geometry phase keeps fixed (e.g. ("shape",) for a video track's shared shape).
    -> (StageReport of the geometry phase with ``metrics``, texture (B,T,T,3) in [0,1])
    """
    dev, dt = params["pose"].device, params["pose"].dtype
    B = params["pose"].shape[0]
    with torch.no_grad():
        out0 = model(**params)
        v0 = out0.vertices
        kp_fit = project(out0.keypoints, K_full)
    scene = CropScene.from_photos(model, K_full, photos, kp_fit, crop_size, stage.crop_scale, dev, dt, backend)

    with torch.no_grad():
        first = scene.rasterize(v0, points=True)
        first_cover = first.cover[..., 0] > 0.5
        skin_p = photo_hand_mask(scene, first_cover, kp2d_full, stage.photo_mask)  # (B,S,S)
        if stage.background == "inpainted":
            hole = ((skin_p > 0.5) | first_cover).to(dt)[..., None]
            scene.background = fill_push_pull(scene.target * (1 - hole), 1 - hole)
    sh0 = ambient_sh(B, dev, dt)
    tex_sharp, _, mean_skin = initial_texture(scene, v0, texture_size, skin_p, g=first)
    flat = mean_skin[:, None, None, :].contiguous()
    photo_before, mask_before = photometric_error(scene, first, flat, sh0)
    photo_mask = (skin_p > 0.5) & scene.valid
    iou_before = iou(mask_before, photo_mask)

    # Phase 1: geometry, light and the coarse albedo.
    state = {**params, "texture": coarse(tex_sharp, stage.texture_detail), "sh": sh0.clone()}
    lrs = {"global_orient": stage.lr_orient, "pose": stage.lr_pose, "shape": stage.lr_shape,
           "transl": stage.lr_transl, "texture": stage.lr_texture, "sh": stage.lr_light}
    for k in freeze:
        lrs.pop(k, None)
    start = {k: params[k].detach().clone() for k in ("global_orient", "pose")}
    start["keypoints"] = out0.keypoints
    appearance = None
    if stage.geometry_albedo == "prior" and texture_prior is not None:
        appearance = PriorAppearance(texture_prior, scene, skin_p, stage.prior_detail, stage.prior_every)
        del lrs["texture"]
    terms = geometry_terms(model, scene, K_full, kp2d_full, scale, skin_p, sh0, stage, start, appearance)
    report = run_adam(state, lrs, terms, max_iters=stage.iters, tol=stage.tol, patience=stage.patience,
                      on_step=on_step)
    for k in ("global_orient", "pose", "shape", "transl"):
        params[k] = state[k]
    albedo = state["texture"].detach().clamp(0, 1) if appearance is None else appearance.texture

    # Phase 2: the full texture (and light) on the fixed final mesh.
    with torch.no_grad():
        v1 = model(**params).vertices
        g = scene.rasterize(v1, points=True)
    sh1 = state["sh"].detach()
    tex_prior = resize_texture(albedo, texture_size)
    if texture_prior is not None:  # the learned prior's texture, from this mesh's samples, replaces it
        tex_prior = prior_texture(texture_prior, scene, g, sh1, skin_p, texture_size)
    tex1, conf1, _ = initial_texture(scene, v1, texture_size, skin_p, sh=sh1, prior=tex_prior, g=g)
    prior_w = 1 - conf1.clamp(max=1.0)  # (B,T,T,1): 1 where unseen
    tstate = {"texture": tex1, "sh": sh1.clone()}
    done = report.iters
    tex_report = run_adam(tstate, {"texture": stage.lr_texture, "sh": stage.lr_light},
                          texture_terms(scene, g, skin_p, tex_prior, prior_w, sh1, stage),
                          max_iters=stage.texture_iters, tol=stage.tol, patience=stage.patience,
                          on_step=None if on_step is None else (lambda it, t: on_step(done + it, t)))
    tex = tstate["texture"].detach().clamp(0, 1)
    photo_after, mask_after = photometric_error(scene, g, tex, tstate["sh"])
    report.terms.update({k: v for k, v in tex_report.terms.items() if k.startswith("tex_")})
    report.metrics = {
        "photometric_before": photo_before, "photometric_after": photo_after,
        "silhouette_iou_before": iou_before, "silhouette_iou_after": iou(mask_after, photo_mask),
        "dense_iters": report.iters, "texture_iters": tex_report.iters,
    }
    return report, tex
