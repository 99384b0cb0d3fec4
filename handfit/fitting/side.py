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

__all__ = ["side_loss", "resolve_sides", "resolve_track_side", "track_landmarks", "SIDES"]

SIDES = ("left", "right")


def side_loss(model, items: list, device, stage, net=None) -> tuple[torch.Tensor, dict]:
    """Fit B detections with one model and score them.

    items: [(K (3,3) ndarray, Detection)]; stage: a KeypointStage (its ``iters``
    is the budget); net: the model's regressor (None: IK).
    -> (loss (B,), unweighted terms name -> (B,))
    """
    from dataclasses import replace

    from .init import initialise
    from .keypoint import fit_keypoints
    from .hands import to_batch

    # the sides are compared on the 2D and world landmarks alone: every keypoint weighs alike, no depth term
    b = replace(to_batch(items, device, torch.float32), kp_weight=None, depth_ref=None)
    params, _ = initialise(model, b.world, b.kp2d, b.K, net)
    report = fit_keypoints(model, params, b, stage)
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


def _given(d) -> bool:
    """A side the user gave with a box is kept as is."""
    return getattr(d, "side_source", None) == "user"


def mirror_item(K: np.ndarray, det):
    """The mirror image of a detected hand, as the other side's hand: (K (3,3), Detection)
    -> (K, Detection) seen in the image mirrored about the vertical line through the
    principal point (u -> 2 cx - u, world x -> -x, K's skew negated). The camera
    frame is mirrored with it (x -> -x), so a hand fitted to the mirrored detection
    is the mirror image of one fitted to the original."""
    K = np.array(K, np.float64)
    cx = K[0, 2]
    K[0, 1] = -K[0, 1]
    kp = np.array(det.keypoints, np.float64)
    kp[:, 0] = 2 * cx - kp[:, 0]
    world = np.array(det.world, np.float64)
    world[:, 0] = -world[:, 0]
    x1, y1, x2, y2 = np.asarray(det.box_xyxy, np.float64)
    return K, replace(det, keypoints=kp, world=world, box_xyxy=np.array([2 * cx - x2, y1, 2 * cx - x1, y2]),
                      side="right" if det.side == "left" else "left")


def _side_losses(items: list, opts, res, device, iters: int, batched: bool = True) -> dict:
    """{side: (B,) side_loss} of B (K, Detection-for-that-side) pairs per side.

    When the left model is the right one mirrored (Anny; MANO without a left
    model), the left fits are the right model's fits to the mirrored detections
    (:func:`mirror_item`), run in one batch with the right ones: the same losses
    up to rounding, at the cost of one fit instead of two (``batched`` False:
    two fits, one per model)."""
    stage = replace(opts.keypoint, iters=min(iters, opts.keypoint.iters))
    models = {side: res.model(opts.model, side, opts.mano, device, torch.float32) for side in SIDES}
    if batched and models["left"].mirror and not models["right"].mirror:
        right = models["right"]
        n = len(items["right"])
        both = list(items["right"]) + [mirror_item(K, d) for K, d in items["left"]]
        loss, _ = side_loss(right, both, device, stage, res.regressor(right, device, torch.float32))
        return {"right": loss[:n], "left": loss[n:]}
    losses = {}
    for side in SIDES:
        model = models[side]
        losses[side], _ = side_loss(model, items[side], device, stage, res.regressor(model, device, torch.float32))
    return losses


def resolve_sides(items: list, opts, res, device, check_below: float, detector=None, iters: int = 120) -> list:
    """Decide each detection's side when its handedness is uncertain.

    items: [(K (3,3), Detection, rgb (H,W,3) uint8 or None)]; res: a
    :class:`~handfit.fitting.resources.Resources`. A detection whose score is
    below ``check_below`` (1.0: every detection; 0: none) is looked at again
    in 8 views of its crop (:func:`side_candidates`, needs ``detector`` and
    the photo); then each side's model is fitted for ``iters`` keypoint
    iterations to the landmarks of the views that called the hand that side
    (the original landmarks when none did), and the side with the lower
    :func:`side_loss` is kept, with its landmarks. -> the detections, each
    with ``side_source`` (``"detector"`` or ``"fit"``) and, when checked,
    ``side_losses`` {left, right} and ``detector_side``. A side given with
    a box (``side_source == "user"``) is never changed.
    """
    dets = [d if _given(d) else replace(d, side_source="detector", side_losses=None) for _, d, _ in items]
    todo = [i for i, d in enumerate(dets) if d.score < check_below and not _given(d)]
    if not todo:
        return dets
    cands = []
    for i in todo:
        d, rgb = dets[i], items[i][2]
        best = side_candidates(detector, rgb, d)[0] if detector is not None and rgb is not None else {}
        cands.append({s: best.get(s, d) for s in SIDES})
    losses = _side_losses({s: [(items[i][0], c[s]) for i, c in zip(todo, cands)] for s in SIDES},
                          opts, res, device, iters)
    for b, i in enumerate(todo):
        d = dets[i]
        ls = {s: float(losses[s][b]) for s in SIDES}
        side = min(SIDES, key=lambda s: ls[s])
        chosen = cands[b][side]
        dets[i] = replace(chosen, side=side, score=d.score, pass_name=d.pass_name, box_xyxy=chosen.box_xyxy,
                          side_source="fit", side_losses=ls, detector_side=d.side)
    return dets


def resolve_track_side(items: list, opts, res, device, check_below: float, iters: int = 120,
                       frames: int = 8) -> list:
    """One side for all T frames of a tracked hand. items: [(K, Detection)] in frame order.

    When any frame's handedness score is below ``check_below``, both models
    are fitted (as in :func:`resolve_sides`, on the frames' own landmarks) to
    up to ``frames`` evenly spaced frames, and the side with the lower mean
    :func:`side_loss` is every frame's. -> the T detections with ``side_source``
    (and, when checked, ``side_losses`` and ``detector_side``)."""
    dets = [d for _, d in items]
    if all(_given(d) for d in dets):
        return dets
    if not any(d.score < check_below for d in dets):
        return [d if _given(d) else replace(d, side_source="detector", side_losses=None) for d in dets]
    pick = sorted(set(np.linspace(0, len(items) - 1, min(frames, len(items))).round().astype(int).tolist()))
    sub = [items[i] for i in pick]
    losses = _side_losses({s: sub for s in SIDES}, opts, res, device, iters)
    ls = {s: float(losses[s].mean()) for s in SIDES}
    side = min(SIDES, key=lambda s: ls[s])
    return [d if _given(d) else replace(d, side=side, side_source="fit", side_losses=ls, detector_side=d.side)
            for d in dets]


def track_landmarks(detector, frames: list, side: str) -> list:
    """The landmarks of a track's frames that MediaPipe called the other side.

    A hand called the wrong side comes with landmarks of the other hand's
    chirality, and relabelling it (:func:`resolve_track_side`) does not change
    them: fitted as they are, such a frame is mirrored, and a sequence that
    starts from it starts wrong. frames: [(rgb (H,W,3) uint8 or None, the
    frame's original Detection, its Detection after the side decision)].
    Each frame whose original side differs from ``side`` is looked at again in
    the 8 views of :func:`side_candidates`; the best view that called it
    ``side`` gives its landmarks. -> one Detection per frame
    """
    out = []
    for rgb, original, det in frames:
        if rgb is None or original.side == side or detector is None:
            out.append(det)
            continue
        best = side_candidates(detector, rgb, original)[0].get(side)
        out.append(det if best is None else replace(
            best, side=side, score=det.score, pass_name=det.pass_name, side_source="fit",
            side_losses=getattr(det, "side_losses", None), detector_side=original.side))
    return out
