"""The keypoint stage of a video track: warm starts, one shape, temporal terms.

:func:`fit_sequence` fits the T frames of one tracked hand:

1. the first frame from the initialiser with the full keypoint stage;
2. each later frame warm-started from the previous frame's pose and
   translation, ``warm_iters`` iterations, shape fixed;
3. all frames refined together: one shape shared by the track, the keypoint
   terms per frame and, when ``smooth_weight`` > 0, a penalty on the second
   differences (accelerations) of orientation, pose and translation.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..options import KeypointStage
from .adam import run_adam
from .keypoint import fit_keypoints, keypoint_terms

SIGMA_POSE = 0.3      # radians of acceleration per chosen frame that cost as much as ...
SIGMA_TRANSL = 0.005  # ... metres of acceleration; both against the 2D term's scale
SMOOTH_SCALE = 5e-5   # against the 2D term; chosen on the dev clip (docs/benchmarks.md)
REFINE_ITERS = 150


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
    warm_lrs = {"global_orient": stage.lr_orient, "pose": stage.lr_pose, "transl": stage.lr_transl}

    # Sequential pass: the first frame from the initialiser, each later one warm-started.
    per_frame, iters = [], []
    params, method = initialise(batch.select([0]))
    rep = fit_keypoints(model, params, K[:1], kp2d[:1], world[:1], scale[:1], stage)
    per_frame.append({k: v.detach() for k, v in params.items()})
    iters.append(rep.iters)
    for t in range(1, T):
        params = {k: v.detach().clone() for k, v in per_frame[-1].items()}
        terms = keypoint_terms(model, K[t:t + 1], kp2d[t:t + 1], world[t:t + 1], scale[t:t + 1], stage.weights)
        rep = run_adam(params, warm_lrs, terms, max_iters=warm_iters, tol=stage.tol, patience=stage.patience)
        per_frame.append({k: v.detach() for k, v in params.items()})
        iters.append(rep.iters)
    seq = {k: torch.cat([p[k] for p in per_frame]) for k in per_frame[0]}

    # Joint refinement: one shape for the track, smoothness across its frames.
    joint = {"global_orient": seq["global_orient"].clone(), "pose": seq["pose"].clone(),
             "transl": seq["transl"].clone(), "shape1": seq["shape"][:1].clone()}
    kterms = keypoint_terms(model, K, kp2d, world, scale, stage.weights)

    def terms(p):
        full = {**p, "shape": p["shape1"].expand(T, -1)}
        t = kterms(full)
        t["smooth"] = smooth_terms(full, smooth_weight)
        return t

    lrs = {"global_orient": stage.lr_orient, "pose": stage.lr_pose, "transl": stage.lr_transl,
           "shape1": stage.lr_shape}
    rep = run_adam(joint, lrs, terms, max_iters=refine_iters, tol=stage.tol, patience=stage.patience)
    final = {"global_orient": joint["global_orient"].detach(), "pose": joint["pose"].detach(),
             "transl": joint["transl"].detach(), "shape": joint["shape1"].detach().expand(T, -1).contiguous()}
    report = {"terms": {k: v.detach() for k, v in rep.terms.items()}, "warm_iters": iters,
              "refine_iters": rep.iters}
    return final, method, report
