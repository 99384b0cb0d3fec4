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

from ..detect.evidence import majority_side

__all__ = ["side_loss", "resolve_sides", "resolve_track_side", "track_evidence", "SIDES"]

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


def side_candidate(det, side: str):
    """The evidence for ``det``'s hand as a ``side`` hand: the candidate that the evidence step
    fused from the views that called it that side (:func:`handfit.detect.evidence.gather`),
    or, when none did (or no evidence step ran), ``det``'s own landmarks."""
    return (det.candidates or {}).get(side, det)


def resolve_sides(items: list, opts, res, device, check_below: float, iters: int = 120) -> list:
    """Decide each detection's side when its handedness is uncertain.

    items: [(K (3,3), Detection)]; res: a :class:`~handfit.fitting.resources.Resources`.
    For a detection whose score is below ``check_below`` (1.0: every detection; 0: none),
    each side's model is fitted for ``iters`` keypoint iterations to that side's candidate
    (:func:`side_candidate`: the views of the evidence step that called the hand that side,
    fused), and the side with the lower :func:`side_loss` is kept, with its candidate as the
    evidence. -> the detections, each with ``side_source`` (``"detector"`` or ``"fit"``)
    and, when checked, ``side_losses`` {left, right} and ``detector_side``. A side given with
    a box (``side_source == "user"``) is never changed.
    """
    dets = [d if _given(d) else replace(d, side_source="detector", side_losses=None) for _, d in items]
    todo = [i for i, d in enumerate(dets) if d.score < check_below and not _given(d)]
    if not todo:
        return dets
    cands = [{s: side_candidate(dets[i], s) for s in SIDES} for i in todo]
    losses = _side_losses({s: [(items[i][0], c[s]) for i, c in zip(todo, cands)] for s in SIDES},
                          opts, res, device, iters)
    for b, i in enumerate(todo):
        d = dets[i]
        ls = {s: float(losses[s][b]) for s in SIDES}
        side = min(SIDES, key=lambda s: ls[s])
        chosen = cands[b][side]
        dets[i] = replace(chosen, side=side, score=d.score, pass_name=d.pass_name, box_xyxy=chosen.box_xyxy,
                          side_source="fit", side_losses=ls, detector_side=d.side, candidates=d.candidates,
                          votes=d.votes)
    return dets


def resolve_track_side(items: list, opts, res, device, check_below: float, iters: int = 120,
                       frames: int = 8) -> list:
    """One side for all T frames of a tracked hand. items: [(K, Detection)] in frame order.

    When any frame's handedness score is below ``check_below``, both models
    are fitted (as in :func:`resolve_sides`, each to that side's candidates) to
    up to ``frames`` evenly spaced frames, and the side with the lower mean
    :func:`side_loss` is every frame's; else the score-weighted majority of the frames'
    sides (:func:`majority_side`) is. -> the T detections with ``side_source``
    (and, when checked, ``side_losses`` and ``detector_side``)."""
    dets = [d for _, d in items]
    if all(_given(d) for d in dets):
        return dets
    if not any(d.score < check_below for d in dets):
        # every frame sure, but not necessarily of one side: a flip inside a track takes the majority's
        side = majority_side(dets)
        return [d if _given(d) else replace(d, side=side, side_source="detector", side_losses=None,
                                            detector_side=None if d.side == side else d.side) for d in dets]
    pick = sorted(set(np.linspace(0, len(items) - 1, min(frames, len(items))).round().astype(int).tolist()))
    sub = [items[i] for i in pick]
    losses = _side_losses({s: [(K, side_candidate(d, s)) for K, d in sub] for s in SIDES}, opts, res, device, iters)
    ls = {s: float(losses[s].mean()) for s in SIDES}
    side = min(SIDES, key=lambda s: ls[s])
    return [d if _given(d) else replace(d, side=side, side_source="fit", side_losses=ls, detector_side=d.side)
            for d in dets]


def track_evidence(dets: list, originals: list, side: str) -> list:
    """The evidence of a track's frames that MediaPipe called the other side.

    A hand called the wrong side comes with landmarks of the other hand's chirality, and
    relabelling it (:func:`resolve_track_side`) does not change them: fitted as they are,
    such a frame is mirrored, and a sequence that starts from it starts wrong. So each
    frame whose original side (``originals``, the Detections before the side decision)
    differs from ``side`` takes the candidate that the evidence step fused from the views
    that called it ``side`` (:func:`side_candidate`), when there is one. -> one Detection per frame
    """
    out = []
    for original, det in zip(originals, dets):
        best = (original.candidates or {}).get(side)
        if original.side == side or best is None:
            out.append(det)
            continue
        out.append(replace(best, side=side, score=det.score, pass_name=det.pass_name, side_source="fit",
                           side_losses=getattr(det, "side_losses", None), detector_side=original.side,
                           candidates=original.candidates, votes=original.votes))
    return out
