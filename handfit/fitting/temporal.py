"""The keypoint stage of a video track: warm starts, one shape, temporal terms.

:func:`fit_sequence` fits the T frames of one tracked hand:

1. the first frame from the initialiser with the full keypoint stage;
2. each later frame warm-started from the previous frame's pose and
   translation, ``warm_iters`` iterations, shape fixed;
3. all frames refined together: one shape shared by the track, the keypoint
   terms per frame and, when ``smooth_weight`` > 0, a penalty on the second
   differences (accelerations) of orientation, pose and translation.

:func:`settle_track` refines a track's frames after their dense stage (which fits each
frame alone): each frame's keypoints held where that stage put them while a robust penalty
(:func:`joint_accel_terms`) smooths the accelerations of the joints' depth relative to the wrist.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..camera import project
from ..options import KeypointStage
from . import losses as L
from .adam import run_adam
from .keypoint import fit_keypoints, keypoint_terms

SIGMA_POSE = 0.3      # radians of acceleration per chosen frame that cost as much as ...
SIGMA_TRANSL = 0.005  # ... metres of acceleration; both against the 2D term's scale
SMOOTH_SCALE = 5e-5   # against the 2D term; chosen on the dev clip (docs/benchmarks.md)
REFINE_ITERS = 150
JOINT_SCALE = 6e-3    # the joint-acceleration term against the 2D term (joint_accel_terms)
# its weight in fit_sequence's joint refinement: off, since at 1 the sequence keypoint fit
# went from 8.82 mm / 10.65 mm/frame² to 9.07 / 10.23 on dev3d_seq (PA-MPJPE worse)
REFINE_JOINT = 0.0
SIGMA_DEPTH = 0.005   # metres/frame² of a joint's root-relative depth acceleration that cost rho(1)
SIGMA_PLANE = 0.01    # the same across the image plane
PLANE_RATIO = 0.0     # the image-plane part's weight against the depth part's: 0, since across the
#                       image plane the photo pins the joints and smoothing removes true motion (0.3: 10.85)
# settle_track after a track's dense stage: on all 18 dev3d_seq runs 150 iterations take the
# sequence default's accel_mm from 10.70 to 10.02 and PA-MPJPE from 8.57 to 8.54 mm; more
# iterations, a heavier JOINT_SCALE (0.02) or a lighter hold do not go lower (docs/benchmarks.md,
# "Joint accelerations (issue 20)", bench/seq_temporal.py)
SETTLE_ITERS = 150    # iterations of settle_track (0: none)
SETTLE_3D = 1.0       # settle_track's hold on each root-relative joint (squared change in palm lengths)
SETTLE_2D = 1.0       # settle_track's hold on each keypoint's 2D position


def acceleration(x: torch.Tensor) -> torch.Tensor:
    """Second differences along the first axis: (T,...) -> (T-2,...)."""
    return x[2:] - 2 * x[1:-1] + x[:-2]


def smooth_terms(params: dict, weight: float) -> torch.Tensor:
    """(T,) smoothness penalty, each acceleration charged to its middle frame."""
    T = params["pose"].shape[0]
    out = params["pose"].new_zeros(T)
    if weight <= 0 or T < 3:
        return out
    rot = (acceleration(params["global_orient"]) ** 2).sum(-1) + (acceleration(params["pose"]) ** 2).sum(-1)
    tr = (acceleration(params["transl"]) ** 2).sum(-1)
    out[1:-1] = weight * SMOOTH_SCALE * (rot / SIGMA_POSE ** 2 + tr / SIGMA_TRANSL ** 2)
    return out


def charbonnier(r: torch.Tensor) -> torch.Tensor:
    """sqrt(1 + r²) - 1: quadratic (r²/2) for small r, linear for large, so fast real motion costs little."""
    return torch.sqrt(1 + r * r) - 1


def joint_accel_terms(keypoints: torch.Tensor, weight: float) -> torch.Tensor:
    """(T,) robust penalty on the accelerations of the root-relative joints, each charged to its middle frame.

    keypoints: (T,J,3) camera frame, joint 0 the root. The depth (z) part and the image-plane
    part have their own scales (:data:`SIGMA_DEPTH`, :data:`SIGMA_PLANE`)."""
    T = keypoints.shape[0]
    out = keypoints.new_zeros(T)
    if weight <= 0 or T < 3 or JOINT_SCALE <= 0:
        return out
    a = acceleration(keypoints - keypoints[:, :1])                      # (T-2,J,3)
    cost = charbonnier(a[..., 2] / SIGMA_DEPTH)
    if PLANE_RATIO > 0:
        cost = cost + PLANE_RATIO * charbonnier(a[..., :2].norm(dim=-1) / SIGMA_PLANE)
    out[1:-1] = weight * JOINT_SCALE * cost.mean(-1)
    return out


def fit_sequence(model, batch, stage: KeypointStage, initialise: Callable, warm_iters: int = 60,
                 smooth_weight: float = 1.0, refine_iters: int = REFINE_ITERS) -> tuple:
    """Fit the T frames of one track with one model.

    batch: a :class:`handfit.fitting.pipeline.HandBatch` of the T frames (K, kp2d, world, scale);
    initialise(batch_of_one) -> (params, method) for the first frame.
    -> (params dict of (T,·) tensors, init method of frame 0, report dict with ``terms``
    name -> (T,), ``warm_iters`` (T,) list and ``refine_iters``)
    """
    T = batch.K.shape[0]
    K, kp2d, world, scale = batch.K, batch.kp2d, batch.world, batch.scale
    ref = batch.depth_ref

    def pick(t):
        return None if ref is None else ref[t:t + 1]

    warm_lrs = {"global_orient": stage.lr_orient, "pose": stage.lr_pose, "transl": stage.lr_transl}

    # Sequential pass: the first frame from the initialiser, each later one warm-started.
    per_frame, iters = [], []
    params, method = initialise(batch.select([0]))
    rep = fit_keypoints(model, params, K[:1], kp2d[:1], world[:1], scale[:1], stage, depth_ref=pick(0))
    per_frame.append({k: v.detach() for k, v in params.items()})
    iters.append(rep.iters)
    for t in range(1, T):
        params = {k: v.detach().clone() for k, v in per_frame[-1].items()}
        terms = keypoint_terms(model, K[t:t + 1], kp2d[t:t + 1], world[t:t + 1], scale[t:t + 1], stage.weights,
                               depth_ref=pick(t))
        rep = run_adam(params, warm_lrs, terms, max_iters=warm_iters, tol=stage.tol, patience=stage.patience)
        per_frame.append({k: v.detach() for k, v in params.items()})
        iters.append(rep.iters)
    seq = {k: torch.cat([p[k] for p in per_frame]) for k in per_frame[0]}

    # Joint refinement: one shape for the track, smoothness across its frames.
    joint = {"global_orient": seq["global_orient"].clone(), "pose": seq["pose"].clone(),
             "transl": seq["transl"].clone(), "shape1": seq["shape"][:1].clone()}
    kterms = keypoint_terms(model, K, kp2d, world, scale, stage.weights, depth_ref=ref)

    def terms(p):
        full = {**p, "shape": p["shape1"].expand(T, -1)}
        t = kterms(full)
        t["smooth"] = smooth_terms(full, smooth_weight)
        if REFINE_JOINT > 0:
            kp = model(full["global_orient"], full["pose"], full["shape"], full["transl"]).keypoints
            t["joint_accel"] = joint_accel_terms(kp, smooth_weight * REFINE_JOINT)
        return t

    lrs = {"global_orient": stage.lr_orient, "pose": stage.lr_pose, "transl": stage.lr_transl,
           "shape1": stage.lr_shape}
    rep = run_adam(joint, lrs, terms, max_iters=refine_iters, tol=stage.tol, patience=stage.patience)
    final = {"global_orient": joint["global_orient"].detach(), "pose": joint["pose"].detach(),
             "transl": joint["transl"].detach(), "shape": joint["shape1"].detach().expand(T, -1).contiguous()}
    report = {"terms": {k: v.detach() for k, v in rep.terms.items()}, "warm_iters": iters,
              "refine_iters": rep.iters}
    return final, method, report


def rel(keypoints: torch.Tensor) -> torch.Tensor:
    """(T,J,3) keypoints relative to their root (joint 0)."""
    return keypoints - keypoints[:, :1]


def settle_track(model, params: dict, K: torch.Tensor, scale: torch.Tensor, stage: KeypointStage,
                 weight: float = 1.0, iters: int | None = None) -> dict:
    """The T frames of a track after their dense stage, refined together: each frame's
    keypoints held where the dense stage put them (in 2D, and relative to the root in 3D)
    while :func:`joint_accel_terms` smooths the accelerations of the root-relative joints.
    The dense stage fits each frame alone, so its changes are not consistent across frames.

    params: (T,·) tensors, updated in place (shape kept); K: (T,3,3); scale: (T,) box sides.
    -> report dict (``terms`` name -> (T,), ``iters``)"""
    iters = SETTLE_ITERS if iters is None else iters
    if iters <= 0 or params["pose"].shape[0] < 3 or weight <= 0:
        return {"terms": {}, "iters": 0}
    with torch.no_grad():
        ref = model(**params).keypoints
        ref_uv = project(ref, K)
        ref_rel = rel(ref)
        palm = (ref[:, 9] - ref[:, 0]).norm(dim=-1)[:, None, None].clamp(min=1e-6)   # (T,1,1) metres
    w = stage.weights

    def terms(p):
        kp = model(p["global_orient"], p["pose"], params["shape"], p["transl"]).keypoints
        return {"hold_2d": SETTLE_2D * L.keypoint_2d_loss(project(kp, K), ref_uv, scale),
                "hold_3d": SETTLE_3D * ((rel(kp) - ref_rel) / palm).square().sum(-1).mean(-1),
                "pose_limit": w.pose_limit * L.pose_limit_loss(p["pose"], model.pose_lower, model.pose_upper),
                "joint_accel": joint_accel_terms(kp, weight)}

    lrs = {"global_orient": stage.lr_orient, "pose": stage.lr_pose, "transl": stage.lr_transl}
    # min_iters = iters: the frames are coupled, so none is frozen alone before the end
    rep = run_adam(params, lrs, terms, max_iters=iters, tol=stage.tol, patience=stage.patience, min_iters=iters)
    return {"terms": {k: v.detach() for k, v in rep.terms.items()}, "iters": rep.iters}
