"""Which hand model, left or right, explains a detection better.

MediaPipe's handedness label can be wrong (gloves, renders, a palm seen as
the back of the other hand), and a wrong side ruins the fit: a mirrored hand
cannot be posed into the other. The 2D keypoints and the world landmarks
carry the side themselves (a left hand's 3D landmarks are the mirror image of
a right hand's and no rotation turns one into the other), so the keypoint
stage is run with both models and the side whose fit explains them better is
kept.

The comparison uses the keypoint stage's data terms without their weights:
the 2D reprojection term (robust, in units of the hand box) plus the
scale-free 3D term against the world landmarks, plus the pose-limit term
(a hand forced into the wrong chirality bends joints past their limits).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

__all__ = ["side_loss", "resolve_sides", "SIDES"]

SIDES = ("left", "right")


def side_loss(model, items: list, device, stage, net=None) -> tuple[torch.Tensor, dict]:
    """Fit B detections with one model and score them.

    items: [(K (3,3) ndarray, Detection)]; stage: a KeypointStage (its ``iters``
    is the budget). -> (loss (B,), unweighted terms name -> (B,))
    """
    from ..fitting.init import initialise, load_regressor
    from ..fitting.keypoint import fit_keypoints

    dtype = torch.float32
    K = torch.tensor(np.stack([k for k, _ in items]), device=device, dtype=dtype)            # (B,3,3)
    kp2d = torch.tensor(np.stack([d.keypoints for _, d in items]), device=device, dtype=dtype)  # (B,21,2)
    world = torch.tensor(np.stack([d.world for _, d in items]), device=device, dtype=dtype)     # (B,21,3)
    box = np.stack([d.box_xyxy for _, d in items])
    scale = torch.tensor(np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]), device=device, dtype=dtype)
    if net is None:
        net = load_regressor(model, device, dtype)
    params, _ = initialise(model, world, kp2d, K, net)
    report = fit_keypoints(model, params, K, kp2d, world, scale, stage)
    w = stage.weights
    raw = {}
    for name, weight in (("kp2d", w.kp2d), ("kp3d", w.kp3d), ("pose_limit", w.pose_limit)):
        if name in report.terms and weight > 0:
            raw[name] = report.terms[name].detach() / weight
    loss = sum(raw.values())
    return loss, raw


def side_candidates(detector, rgb: np.ndarray, det) -> dict:
    """The hand in ``det``'s box seen in 8 views (4 rotations x mirror) of a square crop.

    -> {side: Detection in full-image pixels, the best-scored view that
    called the hand that side}, with ``votes`` {side: summed score}. The
    full-image pass judges handedness from one view; a mirrored view is an
    independent second opinion (the model sees the other side's hand)."""
    from ..detect import passes as dp

    H, W = rgb.shape[:2]
    base = dp.square_box_view(rgb, det.box_xyxy, det.pass_name)
    centre = det.keypoints.mean(0)
    best, votes = {}, {"left": 0.0, "right": 0.0}
    for k in range(4):
        for mirrored in (False, True):
            rv = dp.rotate_view(base.image, k)
            M = np.vstack([rv.M, [0, 0, 1]]) @ np.vstack([base.M, [0, 0, 1]])
            img = rv.image
            if mirrored:
                mv = dp.mirror_view(img)
                img, M = mv.image, np.vstack([mv.M, [0, 0, 1]]) @ M
            view = dp.View(det.pass_name, img, M[:2], mirrored)
            found = [dp.map_back(e, view, W, H, detector.box_margin) for e in detector.landmarks(img)]
            found = [e for e in found if dp.same_hand(e, det, 0.35)]
            if not found:
                continue
            e = min(found, key=lambda e: np.linalg.norm(e.keypoints.mean(0) - centre))
            votes[e.side] += e.score
            if e.side not in best or e.score > best[e.side].score:
                best[e.side] = e
    return best, votes


def resolve_sides(photos: list, opts, device, check_below: float, detector=None, iters: int = 120) -> None:
    """Decide each detection's side when its handedness is uncertain.

    photos: objects with ``.K`` (3,3), ``.photo.rgb`` and ``.detections``
    (list, replaced in place). A detection whose score is below
    ``check_below`` (1.0: every detection; 0: none) is looked at again in 8
    views of its crop (:func:`side_candidates`, needs ``detector``); then each
    side's model is fitted for ``iters`` keypoint iterations to the landmarks
    of the views that called the hand that side (the original landmarks when
    none did), and the side with the lower :func:`side_loss` is kept, with
    its landmarks. Every detection gets ``side_source`` (``"detector"`` or
    ``"fit"``) and, when checked, ``side_losses`` {left, right} and
    ``detector_side``. A side given with a box (``side_source == "user"``) is
    never changed.
    """
    from ..models import load_model

    def given(d):  # a side the user gave with a box is kept as is
        return getattr(d, "side_source", None) == "user"

    for p in photos:
        p.detections = [d if given(d) else replace(d, side_source="detector", side_losses=None)
                        for d in p.detections]
    todo = [(p, i) for p in photos for i, d in enumerate(p.detections) if d.score < check_below and not given(d)]
    if not todo:
        return
    stage = replace(opts.keypoint, iters=min(iters, opts.keypoint.iters))
    cands = []
    for p, i in todo:
        d = p.detections[i]
        best = {}
        rgb = getattr(getattr(p, "photo", None), "rgb", None)
        if detector is not None and rgb is not None:
            best, _ = side_candidates(detector, rgb, d)
        cands.append({s: best.get(s, d) for s in SIDES})
    losses = {}
    for side in SIDES:
        model = load_model(opts.model, side=side, mano_path=opts.mano, device=device, dtype=torch.float32)
        items = [(p.K, c[side]) for (p, _), c in zip(todo, cands)]
        losses[side], _ = side_loss(model, items, device, stage)
    for b, (p, i) in enumerate(todo):
        d = p.detections[i]
        ls = {s: float(losses[s][b]) for s in SIDES}
        side = min(SIDES, key=lambda s: ls[s])
        chosen = cands[b][side] if cands[b][side] is not d else d
        p.detections[i] = replace(chosen, side=side, score=d.score, pass_name=d.pass_name,
                                  box_xyxy=chosen.box_xyxy, side_source="fit", side_losses=ls,
                                  detector_side=d.side)
