"""Multi-view 2D evidence for one detected hand (:func:`refine`).

The landmark model is run again on several *views* of the hand's square crop:
the crop itself, its mirror image, small in-plane rotations and a zoomed-out
copy. Each view is an affine warp of the photo (:func:`affine_view`), so a
hand found in it maps back exactly (:func:`handfit.detect.passes.map_back`,
which also turns the world landmarks back and swaps a mirrored view's side).
The views that see the same hand (:func:`~handfit.detect.passes.same_hand`)
with the same side are fused per keypoint with the median
(:func:`fuse`); a view far from the others is dropped first. The spread of
the views around the fused keypoint (median distance, pixels) is kept as
:attr:`~handfit.detect.Detection.keypoint_spread`: a per-keypoint confidence
that the keypoint stage turns into weights of its 2D term
(:func:`spread_weight`).

Measured on the dev photos and dev3d: ``bench/multiview.py``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .passes import LandmarkFn, View, hand_box, hand_size, landmarks_each, map_back, same_hand

__all__ = ["VIEW_SET", "DEFAULT_VIEWS", "view_specs", "affine_view", "hand_views", "fuse", "view_hands", "view_detections", "combine", "refine",
           "spread_weight"]

#: (rotation in degrees counter-clockwise, scale of the hand in the view, mirrored),
#: in the order views are added: ``views=N`` takes the first N.
VIEW_SET = (
    (0.0, 1.0, False), (0.0, 1.0, True),
    (15.0, 1.0, False), (-15.0, 1.0, True), (-15.0, 1.0, False), (15.0, 1.0, True),
    (0.0, 0.8, False), (0.0, 0.8, True),
    (30.0, 1.0, False), (-30.0, 1.0, True), (-30.0, 1.0, False), (30.0, 1.0, True),
    (15.0, 0.8, False), (-15.0, 0.8, True), (-15.0, 0.8, False), (15.0, 0.8, True),
    (30.0, 0.8, False), (-30.0, 0.8, True), (-30.0, 0.8, False), (30.0, 0.8, True),
)

#: The default number of views (:attr:`handfit.FitOptions.views`); see bench/multiview.py.
DEFAULT_VIEWS = 8

#: Side of the square view images, pixels (the landmark model itself sees 224).
VIEW_SIZE = 256
#: The crop side is this many times the detection box's longer side (at scale 1).
CROP_GROW = 1.6


def view_specs(views: int) -> tuple:
    """The first ``views`` entries of :data:`VIEW_SET`."""
    views = int(views)
    if not 0 <= views <= len(VIEW_SET):
        raise ValueError(f"views must be in 0..{len(VIEW_SET)}, got {views}")
    return VIEW_SET[:views]


def affine_view(rgb: np.ndarray, centre, side: float, angle: float = 0.0, mirrored: bool = False,
                out: int = VIEW_SIZE, name: str = "multiview") -> View:
    """A square view of ``side`` full-image pixels centred on ``centre``, turned by ``angle``
    degrees counter-clockwise (as seen on screen), mirrored left-right when ``mirrored``,
    resampled to ``out`` x ``out``.

    ``M`` maps full-image pixels to view pixels (pixel centres at integers):
    ``x' = c' + F s R(angle) (x - centre)`` with ``c' = ((out-1)/2, (out-1)/2)``,
    ``s = out / side`` and ``F = diag(-1, 1)`` when mirrored. Its inverse is exact.
    """
    import cv2

    s = float(out) / float(side)
    a = np.deg2rad(angle)
    # image axes: x right, y down; a counter-clockwise turn on screen is R(-a) in these axes
    R = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    A = s * R
    if mirrored:
        A = np.diag([-1.0, 1.0]) @ A
    c_out = np.full(2, (out - 1) / 2.0)
    t = c_out - A @ np.asarray(centre, np.float64)
    M = np.hstack([A, t[:, None]])
    img = cv2.warpAffine(rgb, M, (int(out), int(out)), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(0, 0, 0))
    tag = f"rot {angle:+.0f} side {side:.0f}" + (" mirror" if mirrored else "")
    return View(name, np.ascontiguousarray(img), M, bool(mirrored), tag)


def hand_views(rgb: np.ndarray, det, views, grow: float = CROP_GROW, out: int = VIEW_SIZE) -> list:
    """The views of ``det``'s crop named by the first ``views`` entries of :data:`VIEW_SET`
    (or by ``views`` itself, a sequence of (angle, scale, mirrored) specs)."""
    box = np.asarray(det.box_xyxy, np.float64)
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    side = max(box[2] - box[0], box[3] - box[1], 8.0) * grow
    specs = view_specs(views) if isinstance(views, (int, np.integer)) else tuple(views)
    return [affine_view(rgb, centre, side / scale, angle, mirrored, out) for angle, scale, mirrored in specs]


def fuse(kps: np.ndarray, drop: float = 0.1):
    """Robust per-keypoint fusion of V views' keypoints.

    kps: (V, 21, D) (pixels, or world metres). A view whose mean keypoint
    distance from the coordinate-wise median exceeds ``drop`` times the hand
    size (the median keypoints' bounding box, first two coordinates) and
    twice the median view's distance is dropped; the rest are fused with the
    coordinate-wise median again.

    -> (fused (21, D), spread (21,): median distance of the kept views from
    the fused keypoint, keep (V,) bool).
    """
    kps = np.asarray(kps, np.float64)
    V = kps.shape[0]
    med = np.median(kps, axis=0)
    keep = np.ones(V, bool)
    if V >= 3:
        size = max(hand_size(med[:, :2]), 1e-9)
        d = np.linalg.norm(kps - med, axis=-1).mean(-1)              # (V,)
        keep = (d <= drop * size) | (d <= 2.0 * np.median(d))
        if keep.sum() < 2:
            keep = d <= np.sort(d)[1]
        med = np.median(kps[keep], axis=0)
    spread = np.median(np.linalg.norm(kps[keep] - med, axis=-1), axis=0)
    return med, spread, keep


#: The agreement (hand sizes) a view's hand of the side other than the detection's needs.
OTHER_AGREE = 0.35
SIDES = ("left", "right")


def view_hands(landmarks_fn: LandmarkFn, rgb: np.ndarray, det, views, agree: float = 0.25,
               box_margin: float = 0.1) -> dict:
    """Per side, per view of ``det``'s crop (:func:`hand_views`): the hand of that side (after
    un-mirroring) nearest ``det`` that is :func:`same_hand` within ``agree`` hand sizes (the
    side other than ``det``'s, or both when ``det`` has none: at least :data:`OTHER_AGREE`),
    in full-image pixels, or None. -> {side: [Detection | None] * views}"""
    H, W = rgb.shape[:2]
    out = {s: [] for s in SIDES}
    own = getattr(det, "side", None)
    vs = hand_views(rgb, det, views)
    for view, dets in zip(vs, landmarks_each(landmarks_fn, [v.image for v in vs])):
        found = [map_back(d, view, W, H, box_margin) for d in dets]
        for s in SIDES:
            # the other side's hand is the mirror image of what was detected: its keypoints
            # can lie further from the detection's, so it is given more room
            room = agree if s == own else max(agree, OTHER_AGREE)
            mine = [c for c in found if c.side == s and same_hand(c, det, room)]
            out[s].append(min(mine, key=lambda c: np.linalg.norm(c.keypoints - det.keypoints, axis=1).mean())
                          if mine else None)
    return out


def view_detections(landmarks_fn: LandmarkFn, rgb: np.ndarray, det, views: int, agree: float = 0.25,
                    box_margin: float = 0.1) -> list:
    """Per view of :func:`hand_views`: the hand nearest ``det`` that is :func:`same_hand`
    (within ``agree`` of the hand size) and, after un-mirroring, of ``det``'s side,
    in full-image pixels; ``None`` where the view has none (:func:`view_hands`' own side)."""
    return view_hands(landmarks_fn, rgb, det, views, agree, box_margin)[det.side]


def combine(det, found: list, min_views: int = 2, fuse_world: bool = True, box_margin: float = 0.1):
    """``det`` with the views' detections ``found`` (``None`` entries skipped) fused
    (:func:`fuse`): keypoints, relative depths and (``fuse_world``) world landmarks,
    the kept views' median of each. Fewer than ``min_views``: ``det`` unchanged."""
    found = [f for f in found if f is not None]
    if len(found) < max(min_views, 1):
        return det
    W, H = det.image_size
    kp, spread, keep = fuse(np.stack([f.keypoints for f in found]))
    kept = [f for f, k in zip(found, keep) if k]
    z = np.median(np.stack([f.keypoints_z for f in kept]), axis=0)
    world = np.median(np.stack([f.world for f in kept]), axis=0) if fuse_world else det.world
    box = hand_box(kp, box_margin, W, H) if W and H else det.box_xyxy
    return replace(det, keypoints=kp, keypoints_z=z, world=world, box_xyxy=box, keypoint_spread=spread,
                   views=int(keep.sum()))


def refine(landmarks_fn: LandmarkFn, rgb: np.ndarray, det, views: int = 8, min_views: int = 2,
           agree: float = 0.25, fuse_world: bool = True, box_margin: float = 0.1):
    """``det`` with keypoints fused from ``views`` views of its crop.

    ``landmarks_fn(image) -> [Detection]`` runs the landmark model on one
    image (:meth:`handfit.detect.Detector.landmarks`). Each view's hand
    (:func:`view_detections`: same hand, same side after un-mirroring) is
    mapped back and the views are fused (:func:`combine`, :func:`fuse`);
    with fewer than ``min_views`` agreeing views ``det`` is returned unchanged.

    -> a :class:`~handfit.detect.Detection` with the fused ``keypoints``,
    ``keypoints_z``, ``world`` (with ``fuse_world``) and ``keypoint_spread``
    (21,) pixels; ``views`` is the number of views fused.
    """
    if views <= 0:
        return det
    if not det.image_size or not det.image_size[0]:
        det = replace(det, image_size=(rgb.shape[1], rgb.shape[0]))
    found = view_detections(landmarks_fn, rgb, det, views, agree, box_margin)
    return combine(det, found, min_views, fuse_world, box_margin)


def spread_weight(spread: np.ndarray, size: float, sigma: float = 0.02) -> np.ndarray:
    """Per-keypoint weights of the 2D term from the views' spread.

    ``sigma**2 / (sigma**2 + (spread / size)**2)``: 1 for a keypoint all views
    agree on, 1/2 where the spread is ``sigma`` hand sizes. ``sigma <= 0``: all ones.
    """
    spread = np.asarray(spread, np.float64)
    if sigma <= 0:
        return np.ones_like(spread)
    r = spread / max(float(size), 1e-9)
    return sigma * sigma / (sigma * sigma + r * r)
