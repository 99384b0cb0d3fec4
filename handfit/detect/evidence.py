"""The one evidence step: everything the fit needs from the landmark model, for one hand.

For each detected hand, one set of views of its crop (:func:`handfit.detect.multiview.hand_views`:
the crop, its mirror image, small turns, a zoomed-out copy) goes through the landmark model
once. The same views serve two ends:

* **the side**: each view's hand, un-mirrored, calls a side; the views that call each side are
  fused into that side's *candidate* (keypoints, relative depth, world landmarks and the
  views' spread, :func:`handfit.detect.multiview.combine`), and the sides' summed scores are
  the *votes*. When MediaPipe's handedness is unsure, the fit compares the two sides'
  candidates (:mod:`handfit.fitting.side`) and keeps one, with its evidence;
* **the evidence**: the candidate of the detection's own side is its fused 2D, 3D and
  relative-depth evidence with its spread (what :func:`handfit.detect.multiview.refine` gives).

So photos, ``handfit eval`` and video tracks get the same evidence, and ``handfit.fitting``
never runs the landmark model itself. ``views`` 0: the detection as it is, no candidates.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from .multiview import SIDES, combine, view_hands
from .passes import LandmarkFn, hand_box

__all__ = ["SIDES", "view_hands", "gather", "gather_all", "look", "majority_side"]

#: Views looked at when fewer than ``min_views`` of the usual ones see the hand (a hand
#: turned far from upright, which the landmark model reads best turned back): right-angle
#: turns of the crop, each also mirrored, as (degrees counter-clockwise, scale, mirrored).
TURNED = tuple((a, 1.0, m) for a in (90.0, 180.0, 270.0) for m in (False, True))


def _views_of(landmarks_fn, rgb, det, views: int, min_views: int, agree: float, box_margin: float) -> dict:
    """:func:`view_hands` with ``views`` views, and the :data:`TURNED` views too when fewer
    than ``min_views`` of them (or than all, when fewer are looked at) saw the hand at all."""
    found = view_hands(landmarks_fn, rgb, det, views, agree, box_margin)
    n = len(found[SIDES[0]])
    seen = sum(any(found[s][v] is not None for s in SIDES) for v in range(n))
    if seen < min(min_views, n):
        more = view_hands(landmarks_fn, rgb, det, TURNED, agree, box_margin)
        found = {s: found[s] + more[s] for s in SIDES}
    return found


def _sides(found: dict, pass_name: str, image_size: tuple, min_views: int, box_margin: float, det=None) -> tuple:
    """Each side's candidate from the views that called the hand that side (``found``, as
    :func:`view_hands` gives): ``det``'s own side fused onto ``det``, any other onto its
    best-scored view (a side no view called has none). -> ({side: Detection}, {side: summed score})"""
    cands, votes = {}, {}
    for s in SIDES:
        seen = [f for f in found[s] if f is not None]
        votes[s] = float(sum(f.score for f in seen))
        if det is not None and s == det.side:
            cands[s] = combine(det, found[s], min_views, True, box_margin)
        elif seen:
            best = replace(max(seen, key=lambda f: f.score), pass_name=pass_name, image_size=image_size)
            cands[s] = combine(best, found[s], min_views, True, box_margin)
    return cands, votes


def gather(landmarks_fn: LandmarkFn, rgb: np.ndarray, det, views: int, min_views: int = 2, agree: float = 0.25,
           box_margin: float = 0.1):
    """``det`` with its evidence from ``views`` views of its crop (:func:`view_hands`; the
    :data:`TURNED` views as well when fewer than ``min_views`` of them see the hand).

    -> a :class:`~handfit.detect.Detection`: its own side's views fused (:func:`combine`;
    ``det`` as it is with fewer than ``min_views`` of them), with ``candidates`` {side:
    Detection}, each side's views fused the same way (the other side's from its best-scored
    view; the side is absent when no view called it), and ``votes`` {side: summed score}.
    ``views`` 0: ``det`` unchanged."""
    if views <= 0:
        return det
    if not det.image_size or not det.image_size[0]:
        det = replace(det, image_size=(rgb.shape[1], rgb.shape[0]))
    found = _views_of(landmarks_fn, rgb, det, views, min_views, agree, box_margin)
    cands, votes = _sides(found, det.pass_name, det.image_size, min_views, box_margin, det)
    return replace(cands[det.side], candidates=cands, votes=votes)


def look(landmarks_fn: LandmarkFn, rgb: np.ndarray, keypoints: np.ndarray, views: int, agree: float = 0.5,
         min_views: int = 2, box_margin: float = 0.1):
    """A tracked hand found again where it was predicted to be: its evidence step run on the
    crop around the predicted (21,2) ``keypoints`` instead of around a detection.

    The crop's views are resampled to the landmark model's size (a small hand is upscaled),
    as MediaPipe's own video mode looks for a hand where its last landmarks were; this finds
    hands that the pass over the whole frame misses at low resolution. The side is the views'
    majority (their summed scores), and the evidence that side's views fused; the score is
    that side's best view's. -> a Detection as :func:`gather`'s (``pass_name`` ``"track"``),
    or None when no view (at least one is looked at) sees a hand within ``agree`` hand sizes."""
    H, W = rgb.shape[:2]
    kp = np.asarray(keypoints, np.float64)
    guess = SimpleNamespace(keypoints=kp, box_xyxy=hand_box(kp, box_margin, W, H))  # where, not what: no side
    found = _views_of(landmarks_fn, rgb, guess, max(int(views), 1), min_views, agree, box_margin)
    cands, votes = _sides(found, "track", (W, H), min_views, box_margin)
    if not cands:
        return None
    side = max(cands, key=lambda s: votes[s])
    return replace(cands[side], candidates=cands, votes=votes)


def gather_all(landmarks_fn: LandmarkFn, rgb: np.ndarray, dets: list, views: int, **kw) -> list:
    """:func:`gather` for each of an image's detections."""
    return [gather(landmarks_fn, rgb, d, views, **kw) for d in dets]


def majority_side(dets: list) -> str:
    """The side with the larger sum of handedness scores over a hand's detections (a
    track's frames), the first detection's on a tie."""
    votes: dict = {}
    for d in dets:
        votes[d.side] = votes.get(d.side, 0.0) + float(d.score)
    return max(votes, key=lambda s: (votes[s], s == dets[0].side))
