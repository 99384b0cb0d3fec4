"""The keypoint stage: pose, shape and translation of B hands against the
detected 2D keypoints and MediaPipe's world landmarks (:func:`fit_keypoints`)."""

from __future__ import annotations

import torch

from ..camera import project
from . import losses as L
from ..options import KeypointStage, KeypointWeights
from .adam import StageReport, run_adam
from .hands import HandBatch


def keypoint_terms(model, batch: HandBatch, w: KeypointWeights, kp2d_weight: float | None = None):
    """Build ``terms(params) -> dict of (B,)`` for the keypoint stage of the B hands of ``batch``:
    its K (B,3,3), detected kp2d (B,21,2), world landmarks (B,21,3) or None, box sides
    scale (B,), 2D weights kp_weight (B,21) or None (every keypoint alike) and depth_ref
    (B,21,3) or None (a NaN row: that hand has no depth term). ``kp2d_weight`` overrides
    ``w.kp2d``."""
    K, kp2d, world, scale, kp_weight, depth_ref = (batch.K, batch.kp2d, batch.world, batch.scale,
                                                   batch.kp_weight, batch.depth_ref)
    w2d = w.kp2d if kp2d_weight is None else kp2d_weight
    has_depth = None if depth_ref is None else torch.isfinite(depth_ref).flatten(1).all(-1)   # (B,)

    def terms(p):
        kp = model.keypoints(p["global_orient"], p["pose"], p["shape"], p["transl"])
        uv = project(kp, K)
        t = {
            "kp2d": w2d * L.keypoint_2d_loss(uv, kp2d, scale, kp_weight),
            "pose_limit": w.pose_limit * L.pose_limit_loss(p["pose"], model.pose_lower, model.pose_upper),
            "pose_l2": w.pose_l2 * L.pose_l2_loss(p["pose"]),
            "shape": w.shape * L.shape_loss(p["shape"]),
        }
        if world is not None and w.kp3d > 0:
            t["kp3d"] = w.kp3d * L.keypoint_3d_loss(kp, world)
        if depth_ref is not None and w.depth > 0:
            # a hand without depths is its own reference: no term, and no NaN in the gradient
            ref = torch.where(has_depth[:, None, None], depth_ref, kp.detach())
            t["depth"] = w.depth * L.relative_depth_loss(kp, ref) * has_depth
        return t

    return terms


def fit_keypoints(model, params: dict, batch: HandBatch, stage: KeypointStage | None = None,
                  on_step=None) -> StageReport:
    """Keypoint stage: Adam over global_orient, pose, shape and transl of the B hands of
    ``batch`` (:func:`keypoint_terms`). ``params`` (dict of (B,·) tensors) is updated in
    place and the report returned."""
    stage = stage or KeypointStage()
    lrs = {"global_orient": stage.lr_orient, "pose": stage.lr_pose, "shape": stage.lr_shape,
           "transl": stage.lr_transl}
    return run_adam(params, lrs, keypoint_terms(model, batch, stage.weights),
                    max_iters=stage.iters, tol=stage.tol, patience=stage.patience, on_step=on_step)
