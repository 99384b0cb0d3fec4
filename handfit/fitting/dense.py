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

The texture starts from the photo: visible pixels are unwrapped into UV
samples (grazing angles, silhouette pixels and non-skin colours left out),
splatted into UV space, and unseen texels filled by push-pull towards the
mean observed skin tone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .. import render as R
from ..camera import crop_image, crop_intrinsics, project, square_crop, to_crop
from ..render.shading import sh_lights, sh_shading, vertex_normals
from ..texture.skin import hand_probability, hand_probability_grabcut
from ..texture.unwrap import fill_push_pull, splat, unwrap
from . import losses as L
from .optimize import StageReport, run_adam


@dataclass
class DenseWeights:
    """Weights of the dense stage (defaults documented in docs/fitting.md)."""

    photo: float = 1.0        # robust colour error over the hand and a margin
    grad: float = 0.5         # image-gradient (structure) term
    silhouette: float = 4.0   # antialiased coverage vs the photo's hand mask
    kp2d: float = 0.2         # 2D keypoints, lower than the keypoint stage's 1.0
    kp_trust: float = 100.0   # squared hinge keeping each 2D keypoint within trust_radius of its detection
    pose_limit: float = 1.0
    pose_l2: float = 1e-3
    shape: float = 1e-3
    tex_tv: float = 0.02
    tex_prior: float = 0.05
    sh: float = 0.01          # keep the lighting near the initial ambient light


@dataclass
class DenseStage:
    iters: int = 120
    lr_orient: float = 0.005
    lr_pose: float = 0.01
    lr_shape: float = 0.02
    lr_transl: float = 0.0005
    lr_texture: float = 0.02
    lr_light: float = 0.01
    tol: float = 1e-3
    patience: int = 15
    crop_scale: float = 1.6   # crop side = scale × fitted-keypoint box side
    margin: int = 8           # pixels around the rendered hand included in the photometric term
    mask_confidence: float = 0.6  # silhouette only where the photo mask is this sure: |2p-1| >= it
    texture_detail: int = 16  # the optimised texture starts as the unwrap low-passed to this many
                              # texels a side: a photo-sharp texture unwrapped from a misaligned
                              # mesh bakes the misalignment in and explains it away
    background: str = "photo"  # what the render is composited over: "photo", or "inpainted"
                               # (the photo with its confident hand pixels filled from around them)
    photo_mask: str = "consensus"  # the photo's hand mask: "colour", "grabcut" or "consensus"
                                   # (see photo_hand_mask)
    trust_radius: float = 0.03  # box sides around each detected keypoint the dense stage may move freely in:
                                # about MediaPipe's typical error once the keypoints are calibrated
    kp2d_sigma: float = 0.3   # robust scale of the 2D term (box sides); wider than the keypoint
                              # stage's 0.1 so the detections keep anchoring the fit
    weights: DenseWeights = field(default_factory=DenseWeights)


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


class Scene:
    """Everything fixed during the dense stage for B hands of one model: the
    crops of the photo (targets), their validity masks and intrinsics."""

    def __init__(self, model, target, valid, K, backend="auto", crops=None):
        """target (B,S,S,3) in [0,1]; valid (B,S,S) bool, the pixels the image
        terms may use; K (B,3,3) crop intrinsics."""
        dev, dt = target.device, target.dtype
        self.model, self.backend, self.crops = model, backend, crops
        self.faces = model.faces.to(device=dev, dtype=torch.int32)
        self.uv_faces = model.uv_faces.to(device=dev, dtype=torch.int32)
        self.uv_coords = model.uv_coords.to(device=dev, dtype=dt)
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

    def render(self, vertices, tex, sh, antialias=True):
        """vertices (B,V,3) camera frame -> dict of (B,S,S,·) images."""
        clip = R.camera_to_clip(vertices, self.K, self.res)
        rast = R.rasterize(clip, self.faces, self.res, backend=self.backend)
        cover = (rast[..., 3:] > 0).to(vertices.dtype)                   # (B,S,S,1)
        uv = R.interpolate(self.uv_coords, rast, self.uv_faces)          # (B,S,S,2)
        albedo = R.texture(tex, uv)                                      # (B,S,S,3)
        n = vertex_normals(vertices, self.faces.long())
        nimg = F.normalize(R.interpolate(n, rast, self.faces), dim=-1)
        colour = albedo * sh_shading(nimg, sh)
        comp = colour * cover + self.background * (1 - cover)
        out = {"rast": rast, "clip": clip, "cover": cover[..., 0], "uv": uv, "normals": nimg}
        if antialias:
            both = torch.cat([comp, cover], -1)
            aa = R.antialias(both, rast, clip, self.faces)
            comp, out["coverage"] = aa[..., :3], aa[..., 3]
        else:
            out["coverage"] = cover[..., 0]
        out["rgb"] = comp
        return out


def initial_texture(scene: Scene, vertices, size: int, skin_p=None):
    """Unwrap the photo onto the mesh. -> (texture (B,T,T,3), confidence (B,T,T,1), mean skin (B,3))"""
    with torch.no_grad():
        B = vertices.shape[0]
        flat = torch.full((B, 1, 1, 3), 0.5, device=vertices.device, dtype=vertices.dtype)
        out = scene.render(vertices, flat, ambient_sh(B, vertices.device, vertices.dtype), antialias=False)
        pts = R.interpolate(vertices, out["rast"], scene.faces)
        samples = unwrap(scene.target, out["rast"], out["uv"], out["normals"], pts, valid=scene.valid,
                         colour_weight=skin_p)
        tex, conf = splat(samples, B, size)
        # Weighted mean of the samples, read off the splat (its bilinear weights sum to one per sample).
        total = conf.sum((1, 2))  # (B,1)
        mean = (tex * conf).sum((1, 2)) / total.clamp(min=1e-6)
        mean = torch.where(total > 0, mean, vertices.new_tensor([0.8, 0.62, 0.52]))
        filled = fill_push_pull(tex, conf, prior=mean, saturate=1.0)
    return filled, conf, mean


def low_pass(tex: torch.Tensor, detail: int) -> torch.Tensor:
    """(B,T,T,C) -> same shape, keeping only ~``detail`` texels of detail a side."""
    T = tex.shape[1]
    if detail >= T:
        return tex
    x = tex.permute(0, 3, 1, 2)
    x = F.interpolate(F.adaptive_avg_pool2d(x, detail), size=(T, T), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous()


def photometric_error(scene: Scene, vertices, tex, sh) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute colour error (0..1 per channel) inside the rendered hand mask,
    and that mask. -> ((B,), (B,S,S) bool)"""
    with torch.no_grad():
        out = scene.render(vertices, tex, sh, antialias=False)
        m = (out["cover"] > 0.5) & scene.valid
        err = (out["rgb"] - scene.target).abs().mean(-1)
        return (err * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1), m


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,H,W) bool x2 -> (B,)"""
    inter = (a & b).sum((1, 2)).float()
    union = (a | b).sum((1, 2)).float().clamp(min=1)
    return inter / union


def photo_hand_mask(scene: Scene, render_mask, kp2d_full, kind: str = "consensus") -> torch.Tensor:
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


def dense_terms(model, scene: Scene, K_full, kp2d_full, scale, skin_p, tex_prior, prior_w, sh0, stage: DenseStage):
    """``terms(p) -> dict of (B,)`` for the dense stage; p holds global_orient,
    pose, shape, transl, texture (B,T,T,3) and sh (B,9,3).

    skin_p (B,S,S): the photo's soft hand mask; tex_prior (B,T,T,3) and
    prior_w (B,T,T,1): the texture prior and where it applies; sh0 (B,9,3)
    the initial light.
    """
    w = stage.weights
    validf = scene.valid.to(scene.target.dtype)
    k = 2 * stage.margin + 1
    # The colour-model mask is unreliable where hand and background colours
    # overlap (skin-coloured backgrounds, shadows); only its confident pixels
    # take part in the silhouette term.
    sure = ((2 * skin_p - 1).abs() >= stage.mask_confidence).to(validf.dtype)

    def terms(p):
        out_m = model(p["global_orient"], p["pose"], p["shape"], p["transl"])
        tex = p["texture"].clamp(0, 1)
        r = scene.render(out_m.vertices, tex, p["sh"])
        with torch.no_grad():  # the hand and a margin around it
            region = F.max_pool2d(r["cover"][:, None], k, 1, stage.margin)[:, 0]
            if stage.background == "inpainted":  # uncovered hand pixels count too
                region = torch.maximum(region, (skin_p > 0.5).to(region.dtype) * sure)
            region = region * validf
        uv = project(out_m.keypoints, K_full)
        return {
            "photo": w.photo * L.robust_photometric_loss(r["rgb"], scene.target, region),
            "grad": w.grad * L.gradient_loss(r["rgb"], scene.target, region),
            "silhouette": w.silhouette * L.silhouette_loss(r["coverage"], skin_p, region * sure),
            "kp2d": w.kp2d * L.keypoint_2d_loss(uv, kp2d_full, scale, sigma=stage.kp2d_sigma),
            "kp_trust": w.kp_trust * L.keypoint_trust_loss(uv, kp2d_full, scale, stage.trust_radius),
            "pose_limit": w.pose_limit * L.pose_limit_loss(p["pose"], model.pose_lower, model.pose_upper),
            "pose_l2": w.pose_l2 * L.pose_l2_loss(p["pose"]),
            "shape": w.shape * L.shape_loss(p["shape"]),
            "tex_tv": w.tex_tv * L.texture_tv_loss(tex),
            "tex_prior": w.tex_prior * L.texture_prior_loss(tex, tex_prior, prior_w),
            "sh": w.sh * (p["sh"] - sh0).square().sum((1, 2)),
        }

    return terms


def fit_appearance(model, params: dict, K_full, kp2d_full, scale, photos, stage: DenseStage, texture_size: int,
                   backend: str = "auto", crop_size: int = 256, on_step=None):
    """Run the dense stage on B hands of one model; ``params`` is updated in place.

    K_full (B,3,3), kp2d_full (B,21,2) detected keypoints in the full photo,
    scale (B,) box side in pixels, photos: list of B (H,W,3) uint8 arrays.
    -> (StageReport with ``metrics``, texture (B,T,T,3) in [0,1])
    """
    dev, dt = params["pose"].device, params["pose"].dtype
    B = params["pose"].shape[0]
    with torch.no_grad():
        out0 = model(**params)
        v0 = out0.vertices
        kp_fit = project(out0.keypoints, K_full)
    scene = Scene.from_photos(model, K_full, photos, kp_fit, crop_size, stage.crop_scale, dev, dt, backend)

    with torch.no_grad():
        first = scene.render(v0, torch.full((B, 1, 1, 3), 0.5, device=dev, dtype=dt), ambient_sh(B, dev, dt), False)
        skin_p = photo_hand_mask(scene, first["cover"] > 0.5, kp2d_full, stage.photo_mask)  # (B,S,S)
        if stage.background == "inpainted":
            hole = ((skin_p > 0.5) | (first["cover"] > 0.5)).to(dt)[..., None]
            bg = fill_push_pull(scene.target * (1 - hole), 1 - hole)
            scene.background = bg
    tex_sharp, conf, mean_skin = initial_texture(scene, v0, texture_size, skin_p)
    tex0 = low_pass(tex_sharp, stage.texture_detail)
    sh0 = ambient_sh(B, dev, dt)
    flat = mean_skin[:, None, None, :].expand(B, texture_size, texture_size, 3).contiguous()
    photo_before, mask_before = photometric_error(scene, v0, flat, sh0)
    photo_mask = (skin_p > 0.5) & scene.valid
    iou_before = iou(mask_before, photo_mask)
    prior_w = (1 - conf.clamp(max=1.0))  # (B,T,T,1): 1 where unseen

    terms = dense_terms(model, scene, K_full, kp2d_full, scale, skin_p, tex0, prior_w, sh0, stage)

    state = {**params, "texture": tex0.clone(), "sh": sh0.clone()}
    lrs = {"global_orient": stage.lr_orient, "pose": stage.lr_pose, "shape": stage.lr_shape,
           "transl": stage.lr_transl, "texture": stage.lr_texture, "sh": stage.lr_light}
    report = run_adam(state, lrs, terms, max_iters=stage.iters, tol=stage.tol, patience=stage.patience,
                      on_step=on_step)
    for k in ("global_orient", "pose", "shape", "transl"):
        params[k] = state[k]
    v1 = model(**params).vertices.detach()
    # Export: the photo unwrapped onto the final mesh where it is seen, the
    # fitted (smooth) texture elsewhere.
    sharp, conf1, _ = initial_texture(scene, v1, texture_size, skin_p)
    c = conf1.clamp(max=1.0)
    tex = (c * sharp + (1 - c) * state["texture"].clamp(0, 1)).detach()
    photo_after, mask_after = photometric_error(scene, v1, tex, state["sh"])
    report.metrics = {
        "photometric_before": photo_before, "photometric_after": photo_after,
        "silhouette_iou_before": iou_before, "silhouette_iou_after": iou(mask_after, photo_mask),
        "dense_iters": report.iters,
    }
    return report, tex
