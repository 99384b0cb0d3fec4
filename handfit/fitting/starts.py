"""Starts that cannot blow up: a far-off start replaced by the best of several.

The regressor reads MediaPipe's world landmarks, which for some views (a fist seen from the
back) point the hand the wrong way; the translation solved from the 2D then puts it beside or
behind the camera, and the keypoint stage, started there, never reaches its evidence. So
every start's reprojection is checked (:func:`start_error`); a hand whose start is further
than ``StartStage.check`` box sides from its evidence gets candidates instead
(:func:`candidates`): its own start, the IK start, and the start turned about the wrist by
each rotation of ``StartStage.turns`` -- every one with its translation solved anew from the
2D. All run ``StartStage.iters`` keypoint iterations in one batch and the best is kept
(:func:`best_starts`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..camera import project
from ..geometry import axis_angle_to_matrix, matrix_to_axis_angle
from ..options import KeypointStage, StartStage
from .hands import HandBatch
from .init import init_translation, inverse_kinematics
from .keypoint import fit_keypoints

__all__ = ["box_side", "frame_error", "start_error", "turns", "candidates", "best_starts", "checked_starts"]


def box_side(kp2d: torch.Tensor) -> torch.Tensor:
    """(B,21,2) pixels -> (B,) the larger side of the box around the keypoints (at least 1 px)."""
    return (kp2d.amax(1) - kp2d.amin(1)).amax(-1).clamp(min=1.0)


def frame_error(model, params: dict, batch: HandBatch) -> torch.Tensor:
    """(B,) each hand's largest 2D distance from its evidence (``batch.kp2d``), in box sides
    of the evidence: what :mod:`.quality` calls ``kp2d_max_rel``."""
    with torch.no_grad():
        uv = project(model(**params).keypoints, batch.K)
        return (uv - batch.kp2d).norm(dim=-1).amax(-1) / box_side(batch.kp2d)


def start_error(model, params: dict, batch: HandBatch) -> torch.Tensor:
    """(B,) mean distance of the start's projected keypoints from the evidence (``batch.kp2d``),
    in box sides of the evidence; a keypoint behind the camera counts as infinitely far."""
    with torch.no_grad():
        kp = model(**params).keypoints                                   # (B,21,3)
        uv = project(kp, batch.K)
        err = (uv - batch.kp2d).norm(dim=-1)                              # (B,21)
        err = torch.where(kp[..., 2] > 1e-3, err, torch.full_like(err, math.inf))
        return err.mean(-1) / box_side(batch.kp2d)


def turns(stage: StartStage, device, dtype) -> torch.Tensor:
    """(C,3,3) the camera-frame rotations about the wrist that make the candidate starts,
    the identity first: each axis of ``stage.turns`` ("x", "y", "z") by 180° and ±90°."""
    aa = [[0.0, 0.0, 0.0]]
    for axis in stage.turns:
        e = [0.0, 0.0, 0.0]
        e["xyz".index(axis)] = 1.0
        aa += [[math.pi * v for v in e], [math.pi / 2 * v for v in e], [-math.pi / 2 * v for v in e]]
    return axis_angle_to_matrix(torch.tensor(aa, device=device, dtype=dtype))


def candidates(model, params: dict, batch: HandBatch, stage: StartStage) -> tuple[dict, list]:
    """The candidate starts of B hands: C per hand, hand-major ((B*C,·) tensors), and their
    names (C,). Each start turned about the wrist, then the IK start; every translation solved
    from the 2D (:func:`handfit.fitting.init.init_translation`)."""
    B = params["pose"].shape[0]
    R = turns(stage, params["pose"].device, params["pose"].dtype)              # (C0,3,3)
    C0 = R.shape[0]
    R0 = axis_angle_to_matrix(params["global_orient"])                        # (B,3,3)
    go = matrix_to_axis_angle(R[None] @ R0[:, None]).reshape(B * C0, 3)
    rep = {k: v.repeat_interleave(C0, 0) for k, v in params.items()}
    rep["global_orient"] = go
    names = ["start"] + [f"turn_{a}{d}" for a in stage.turns for d in ("180", "+90", "-90")]
    if stage.ik:
        ik_go, ik_pose, ik_shape = inverse_kinematics(model, batch.world)
        ik = {"global_orient": ik_go, "pose": ik_pose, "shape": ik_shape, "transl": params["transl"]}
        rep = {k: torch.cat([rep[k].reshape(B, C0, -1), ik[k][:, None]], 1).reshape(B * (C0 + 1), -1)
               for k in rep}
        names.append("ik")
    C = len(names)
    with torch.no_grad():
        kp = model(rep["global_orient"], rep["pose"], rep["shape"], torch.zeros_like(rep["transl"])).keypoints
        rep["transl"] = init_translation(kp, batch.kp2d.repeat_interleave(C, 0), batch.K.repeat_interleave(C, 0))
    return rep, names


def best_starts(model, params: dict, batch: HandBatch, kstage: KeypointStage, stage: StartStage
                ) -> tuple[dict, list, torch.Tensor]:
    """For B hands (all far from their evidence): every candidate (:func:`candidates`) run
    ``stage.iters`` keypoint iterations, all in one batch; each hand's lowest total loss kept.
    -> (params (B,·) after those iterations, the chosen candidate's name per hand, (B,) its
    error in box sides after them, :func:`start_error`)"""
    cand, names = candidates(model, params, batch, stage)
    C = len(names)
    B = params["pose"].shape[0]
    many = batch.select([b for b in range(B) for _ in range(C)])
    fit_keypoints(model, cand, many, replace(kstage, iters=stage.iters))
    # the nearest to the evidence wins: the world landmarks' term would favour the very
    # orientation that put the first start astray
    err = start_error(model, cand, many).reshape(B, C)
    best = err.argmin(-1)                                                     # (B,)
    pick = torch.arange(B, device=best.device) * C + best
    out = {k: v.detach()[pick] for k, v in cand.items()}
    return out, [names[int(i)] for i in best], err[torch.arange(B), best]


def checked_starts(model, params: dict, batch: HandBatch, kstage: KeypointStage, stage: StartStage,
                   methods: list) -> tuple[dict, list, torch.Tensor]:
    """Every start of B hands checked: those further than ``stage.check`` box sides from their
    evidence replaced by their :func:`best_starts`, the others left exactly as they are.
    methods: B names of how each start was made ("regressor", ...), a replaced one's
    suffixed with its candidate ("regressor+turn_x180").
    -> (params (B,·), methods, (B,) each kept start's error in box sides)"""
    err = start_error(model, params, batch)
    far = [b for b in range(len(methods)) if not float(err[b]) <= stage.check]
    if not far:
        return params, list(methods), err
    idx = torch.as_tensor(far, device=err.device)
    best, names, best_err = best_starts(model, {k: v.detach()[idx] for k, v in params.items()},
                                        batch.select(far), kstage, stage)
    params = {k: v.detach().clone() for k, v in params.items()}
    methods, err = list(methods), err.clone()
    for i, b in enumerate(far):
        for k in params:
            params[k][b] = best[k][i]
        methods[b] = f"{methods[b]}+{names[i]}"
        err[b] = best_err[i]
    return params, methods, err
