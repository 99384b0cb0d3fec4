"""The detection cascade's extra passes: views of the photo, mapping back, merging.

Every extra pass runs the same MediaPipe hand landmarker on a *view* of the
photo: a tile, an upscaled crop, a rotated or mirrored copy, a
contrast-normalised copy, or a square crop around a wrist found by the pose
model. A view is an image plus the 2x3 affine ``M`` that maps full-image
pixel coordinates to view pixel coordinates (OpenCV convention: the centre of
the top-left pixel is ``(0, 0)``), so a detection found in the view maps back
exactly with ``M``'s inverse. Views are made with ``cv2.warpAffine`` (or an
exact pixel copy for rotations by multiples of 90°), which uses that same
pixel-centre convention.

Extra passes see many more image regions than the full pass, so they would
report more false hands (animal paws, faces, textures). Their detections are
therefore accepted more strictly (:func:`plausible`): higher detector
thresholds (a second landmarker), a hand-shaped set of world landmarks and a
hand that is not tiny in its view. A hand that one view alone found is kept
when it passes these checks (no second view has to agree).

The passes are plain functions. They run the landmarker through a callable,
``landmarks(image, strict=False) -> list[Detection]`` (detections in that
image's pixels; ``strict`` selects the stricter landmarker of the extra
passes), which :meth:`handfit.detect.Detector.landmarks` is; the pose-guided
pass likewise takes ``pose_landmarks(rgb) -> (33, 3) array or None``
(:meth:`handfit.detect.Detector.pose_landmarks`). This module imports nothing
from :mod:`handfit.detect.detector`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..keypoints import TREE_BONES

__all__ = ["View", "PASSES", "FAST_PASSES", "LandmarkFn", "PoseFn", "views_for", "crop_view", "tile_views",
           "rotate_view", "mirror_view", "contrast_view", "square_box_view", "map_back", "hand_box",
           "hand_size", "downscale", "same_hand", "plausible", "box_inside", "merge", "run_extra_passes",
           "detect_in_box", "pose_hand_boxes", "landmarks_each"]

#: ``landmarks(image, strict=False) -> list[Detection]``: one landmarker run on
#: ``image`` as is, detections in its pixels (:meth:`handfit.detect.Detector.landmarks`).
LandmarkFn = Callable[..., list]
#: ``pose_landmarks(rgb) -> (33, 3) [u, v, visibility] or None``: MediaPipe Pose
#: in ``rgb``'s pixels (:meth:`handfit.detect.Detector.pose_landmarks`).
PoseFn = Callable[[np.ndarray], "np.ndarray | None"]


def landmarks_each(landmarks_fn: LandmarkFn, images: list) -> list:
    """``landmarks_fn`` on each image (the full pass's landmarker) -> per image its detections.
    A :class:`~handfit.detect.Detector`'s own ``landmarks`` runs them side by side
    (:meth:`~handfit.detect.Detector.landmarks_each`), with the same detections."""
    owner = getattr(landmarks_fn, "__self__", None)
    if getattr(landmarks_fn, "__name__", "") == "landmarks" and hasattr(owner, "landmarks_each"):
        return owner.landmarks_each(images)
    return [landmarks_fn(im) for im in images]


#: Pass names in the order the thorough cascade runs them.
PASSES = ("full", "tiles", "rotate", "mirror", "contrast", "pose")
FAST_PASSES = ("full",)

#: Every view is scaled so that its longer side is at least this many pixels
#: (the "upscaled crops": a small tile of a small photo gets more landmark-model pixels).
MIN_VIEW_SIDE = 384
#: And at most this (the landmarker downscales larger images anyway).
MAX_VIEW_SIDE = 1280


@dataclass
class View:
    """One image the landmarker runs on.

    Attributes:
        name: the pass it belongs to (``"tiles"``, ``"rotate"``, ...).
        image: ``(h, w, 3)`` uint8 RGB.
        M: ``(2, 3)`` float64 affine, full-image pixel ``(u, v, 1)`` -> view pixel.
        mirrored: the view is a mirror image, so a detected side is swapped back.
        tag: a short description (e.g. ``"tile 0.67 @ (120, 0)"``) for debugging.
    """

    name: str
    image: np.ndarray
    M: np.ndarray
    mirrored: bool = False
    tag: str = ""


def _affine_view(rgb: np.ndarray, M: np.ndarray, size: tuple[int, int], name: str, tag: str = "",
                 mirrored: bool = False) -> View:
    import cv2

    w, h = int(size[0]), int(size[1])
    img = cv2.warpAffine(rgb, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(0, 0, 0))
    return View(name, np.ascontiguousarray(img), np.asarray(M, np.float64), mirrored, tag)


def crop_view(rgb: np.ndarray, x0: float, y0: float, side_w: float, side_h: float, name: str,
              out_long: int | None = None, tag: str = "") -> View:
    """The region ``[x0, x0+side_w) x [y0, y0+side_h)`` (pixel edges) scaled by ``s``.

    With pixel edges at half-integers, region edge ``x0 - 0.5`` maps to view
    edge ``-0.5``: ``u' = s (u - x0 + 0.5) - 0.5``.
    """
    long = max(side_w, side_h)
    target = out_long if out_long is not None else min(max(long, MIN_VIEW_SIDE), MAX_VIEW_SIDE)
    s = float(target) / float(long)
    M = np.array([[s, 0.0, s * (0.5 - x0) - 0.5], [0.0, s, s * (0.5 - y0) - 0.5]])
    size = (max(1, round(side_w * s)), max(1, round(side_h * s)))
    return _affine_view(rgb, M, size, name, tag or f"crop {side_w:.0f}x{side_h:.0f} @ ({x0:.0f}, {y0:.0f})")


def tile_views(rgb: np.ndarray, fractions=(2 / 3, 1 / 2)) -> list[View]:
    """Overlapping tiles at each fraction of the longer side (and of the shorter side)."""
    H, W = rgb.shape[:2]
    views = []
    for f in fractions:
        tw, th = max(1.0, f * W), max(1.0, f * H)
        # tiles overlap by at least a third of their size
        nx = 1 + int(np.ceil((W - tw) / (tw * 2 / 3) - 1e-9))
        ny = 1 + int(np.ceil((H - th) / (th * 2 / 3) - 1e-9))
        xs = np.linspace(0, W - tw, nx) if nx > 1 else [0.0]
        ys = np.linspace(0, H - th, ny) if ny > 1 else [0.0]
        for y0 in ys:
            for x0 in xs:
                views.append(crop_view(rgb, float(x0), float(y0), tw, th, "tiles",
                                       tag=f"tile {f:.2f} @ ({x0:.0f}, {y0:.0f})"))
    return views


def rotate_view(rgb: np.ndarray, k: int) -> View:
    """The photo turned ``k`` quarter turns counter-clockwise (``np.rot90``): exact pixel copies."""
    H, W = rgb.shape[:2]
    k %= 4
    img = np.ascontiguousarray(np.rot90(rgb, k))
    # np.rot90 with k=1 maps pixel (u, v) -> (v, W-1-u); compose k times.
    M = np.eye(3)
    w, h = W, H
    for _ in range(k):
        step = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0], [0.0, 0.0, 1.0]])
        M = step @ M
        w, h = h, w
    return View("rotate", img, M[:2], False, f"rot{90 * k}")


def mirror_view(rgb: np.ndarray) -> View:
    """The photo mirrored left-right: ``u' = W - 1 - u``."""
    W = rgb.shape[1]
    M = np.array([[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0]])
    return View("mirror", np.ascontiguousarray(rgb[:, ::-1]), M, True, "mirror")


def contrast_view(rgb: np.ndarray) -> View:
    """CLAHE on the luminance, then gray-world balance: for grayscale, dark or flat photos."""
    import cv2

    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8))
    lab[..., 0] = clahe.apply(lab[..., 0])
    out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    M = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return View("contrast", np.ascontiguousarray(out), M, False, "clahe")


def square_box_view(rgb: np.ndarray, box, name: str, grow: float = 1.6, tag: str = "") -> View:
    """A square crop centred on ``box`` (x0, y0, x1, y1, pixels), ``grow`` times its longer side."""
    x0, y0, x1, y1 = [float(v) for v in box[:4]]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0, 8.0) * grow
    out = int(min(max(side, 256), 512))
    return crop_view(rgb, cx - side / 2, cy - side / 2, side, side, name, out_long=out,
                     tag=tag or f"box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f})")


def views_for(rgb: np.ndarray, name: str) -> list[View]:
    """The views of one image-only pass (``tiles``, ``rotate``, ``mirror``, ``contrast``)."""
    if name == "tiles":
        return tile_views(rgb)
    if name == "rotate":
        return [rotate_view(rgb, k) for k in (1, 2, 3)]
    if name == "mirror":
        return [mirror_view(rgb)]
    if name == "contrast":
        return [contrast_view(rgb)]
    raise ValueError(f"unknown pass {name!r}")


# ---------------------------------------------------------------- pixel geometry


def hand_box(kp: np.ndarray, margin: float, W: int, H: int) -> np.ndarray:
    """``(4,)`` ``(x1, y1, x2, y2)``: the keypoints' bounding box grown by ``margin``
    times its longer side on every side, clipped to the ``W`` x ``H`` image."""
    lo, hi = kp.min(axis=0), kp.max(axis=0)
    m = margin * float(max(hi - lo))
    box = np.array([lo[0] - m, lo[1] - m, hi[0] + m, hi[1] + m], dtype=np.float64)
    box[[0, 2]] = np.clip(box[[0, 2]], -0.5, W - 0.5)
    box[[1, 3]] = np.clip(box[[1, 3]], -0.5, H - 0.5)
    return box


def downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """``rgb`` area-downscaled so that its longer side is at most ``max_side`` (as is if it is)."""
    H, W = rgb.shape[:2]
    long_side = max(H, W)
    if long_side <= max_side:
        return rgb
    import cv2

    r = max_side / long_side
    size = (max(1, round(W * r)), max(1, round(H * r)))
    # Normalised landmark coordinates refer to the whole image extent, which
    # resizing preserves exactly, so the rounding of ``size`` does not matter.
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


# ---------------------------------------------------------------- mapping back


def map_back(det, view: View, W: int, H: int, box_margin: float = 0.1):
    """A :class:`~handfit.detect.Detection` found in ``view`` -> full-image coordinates.

    Keypoints go through the inverse affine; relative depth is divided by the
    view's scale; world landmarks are turned back by the view's in-plane
    rotation (MediaPipe's world frame follows the image axes) and mirrored
    back in ``x`` for a mirrored view, whose side is swapped.
    """
    A = view.M[:, :2]
    t = view.M[:, 2]
    Ainv = np.linalg.inv(A)
    kp = (det.keypoints - t) @ Ainv.T
    scale = float(np.sqrt(abs(np.linalg.det(A))))
    # rotation part of A (A = scale * R, R orthogonal, det R = -1 when mirrored)
    R = A / scale
    world = det.world.copy()
    world[:, :2] = world[:, :2] @ R  # R^T applied to row vectors: view axes -> image axes
    side = det.side
    if view.mirrored:
        side = {"left": "right", "right": "left"}[side]
    return replace(det, side=side, keypoints=kp, keypoints_z=det.keypoints_z / scale, world=world,
                   box_xyxy=hand_box(kp, box_margin, W, H), image_size=(W, H), pass_name=view.name)


# ---------------------------------------------------------------- acceptance and merging


def hand_size(kp: np.ndarray) -> float:
    """Longer side of the keypoints' bounding box, pixels."""
    return float(np.ptp(kp, axis=0).max())


def same_hand(a, b, frac: float = 0.25) -> bool:
    """Mean keypoint distance under ``frac`` of the larger hand size: the same
    hand seen by two passes."""
    ref = max(hand_size(a.keypoints), hand_size(b.keypoints), 1.0)
    d = np.linalg.norm(a.keypoints - b.keypoints, axis=1)
    return bool(d.mean() < frac * ref)


def plausible(det, view_shape: tuple[int, int], min_frac: float = 0.06) -> bool:
    """Landmark checks for a detection from an extra pass (in view coordinates).

    - the hand spans at least ``min_frac`` of the view's longer side (the
      landmarker's false hands on textures are mostly tiny);
    - its world landmarks span 8-30 cm and its palm is 4-13 cm long, with
      no bone of the kinematic tree (:data:`handfit.keypoints.TREE_BONES`)
      longer than the palm;
    - its 2D keypoints are not collapsed (the palm is not a dot).
    """
    h, w = view_shape[:2]
    if hand_size(det.keypoints) < min_frac * max(h, w):
        return False
    wl = det.world
    span = np.linalg.norm(wl[None] - wl[:, None], axis=-1).max()
    if not 0.08 < span < 0.30:
        return False
    palm = np.linalg.norm(wl[9] - wl[0])
    if not 0.04 < palm < 0.13:
        return False
    bones = np.array([np.linalg.norm(wl[i] - wl[j]) for i, j in TREE_BONES])
    if bones.max() > 1.25 * palm:
        return False
    palm2d = np.linalg.norm(det.keypoints[9] - det.keypoints[0])
    return bool(palm2d > 0.15 * hand_size(det.keypoints))


def box_inside(a, b) -> float:
    """Fraction of ``a``'s box area that lies inside ``b``'s box."""
    x0, y0 = max(a.box_xyxy[0], b.box_xyxy[0]), max(a.box_xyxy[1], b.box_xyxy[1])
    x1, y1 = min(a.box_xyxy[2], b.box_xyxy[2]), min(a.box_xyxy[3], b.box_xyxy[3])
    area = max((a.box_xyxy[2] - a.box_xyxy[0]) * (a.box_xyxy[3] - a.box_xyxy[1]), 1e-9)
    return float(max(0.0, x1 - x0) * max(0.0, y1 - y0) / area)


def merge(dets: list, frac: float = 0.25, inside: float = 0.6) -> list:
    """One detection per hand: the best-scored one of each group of duplicates.

    Detections are taken in order of (full pass first, then score); a later
    one that is :func:`same_hand` as a kept one is dropped, but a higher
    score of the same side raises the kept one's score (the hand's best
    score), and one of the other side lowers it to the mean of the two
    opinions (``(s_kept + 1 - s_other) / 2``), so that the side is checked. An extra
    pass's detection whose box mostly (``inside``) overlaps a kept hand's
    box (either way) is dropped too: a tile or a rotated copy often sees part of a hand
    (the fingers) as a hand of its own. (Two overlapping hands that the
    full pass reports are both kept.)"""
    order = sorted(dets, key=lambda d: (d.pass_name != "full", -d.score))
    keep: list = []   # [kept detection, best same-side score, best other-side score]
    for d in order:
        for g in keep:
            k = g[0]
            overlap = max(box_inside(d, k), box_inside(k, d))
            if same_hand(d, k, frac) or (d.pass_name != "full" and overlap >= inside):
                if d.side == k.side:
                    g[1] = max(g[1], d.score)
                else:
                    g[2] = max(g[2], d.score)
                break
        else:
            keep.append([d, d.score, 0.0])
    # another pass calling a hand the other side makes its handedness uncertain,
    # which the side check (fitting/side.py) then settles
    keep = [replace(k, score=same if other == 0 else min(same, 0.5 * (same + 1.0 - other)))
            for k, same, other in keep]
    keep.sort(key=lambda d: -d.score)
    return keep


# ---------------------------------------------------------------- running the passes


def _in_view(landmarks: LandmarkFn, view: View, strict: bool, check: bool = True) -> list:
    """Landmarker on one view -> (plausible) detections in the view's pixels."""
    dets = landmarks(view.image, strict=strict)
    if check:
        dets = [d for d in dets if plausible(d, view.image.shape)]
    return dets


def run_extra_passes(landmarks: LandmarkFn, rgb: np.ndarray, passes, box_margin: float = 0.1,
                     pose_landmarks: PoseFn | None = None) -> list:
    """Every detection of the named extra passes, mapped to full-image pixels.

    ``landmarks`` runs the landmarker (:data:`LandmarkFn`); the ``"pose"``
    pass also needs ``pose_landmarks`` (:data:`PoseFn`). Duplicates are left
    in (:func:`merge` removes them). Every detection that passes
    :func:`plausible` in its view is returned, also a hand that only one tile
    found.
    """
    H, W = rgb.shape[:2]
    out = []
    for name in passes:
        if name == "pose":
            if pose_landmarks is None:
                raise ValueError("the pose pass needs pose_landmarks")
            for box in pose_hand_boxes(pose_landmarks, rgb):
                d = detect_in_box(landmarks, rgb, box, "pose", strict=True, box_margin=box_margin)
                if d is not None:
                    out.append(d)
            continue
        for view in views_for(rgb, name):
            out += [map_back(d, view, W, H, box_margin) for d in _in_view(landmarks, view, True)]
    return out


def detect_in_box(landmarks: LandmarkFn, rgb: np.ndarray, box, name: str, strict: bool = False,
                  box_margin: float = 0.1):
    """The hand inside ``box`` (x0, y0, x1, y1 full-image pixels), or ``None``.

    The landmarker runs on a square crop around the box, then on that crop
    turned by 90, 270 and 180 degrees until a hand is found; of several hands
    the one nearest the box centre wins. ``strict``: the strict landmarker,
    and only :func:`plausible` hands."""
    H, W = rgb.shape[:2]
    base = square_box_view(rgb, box, name)
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    for k in (0, 1, 3, 2):
        rv = rotate_view(base.image, k)
        view = View(name, rv.image, (np.vstack([rv.M, [0, 0, 1]]) @ np.vstack([base.M, [0, 0, 1]]))[:2],
                    False, f"{base.tag} rot{90 * k}")
        dets = [map_back(d, view, W, H, box_margin)
                for d in _in_view(landmarks, view, strict, check=strict)]
        if dets:
            return min(dets, key=lambda d: np.linalg.norm(d.keypoints.mean(0) - centre))
    return None


# ---------------------------------------------------------------- pose-guided boxes

#: MediaPipe Pose landmark ids: (elbow, wrist, pinky, index, thumb) per arm.
_ARMS = {"left": (13, 15, 17, 19, 21), "right": (14, 16, 18, 20, 22)}


def pose_hand_boxes(pose_landmarks: PoseFn, rgb: np.ndarray, min_visibility: float = 0.3) -> list:
    """Boxes (x0, y0, x1, y1) around each visible wrist that MediaPipe Pose finds.

    ``pose_landmarks(rgb)`` gives the 33 pose landmarks as ``(u, v,
    visibility)`` in ``rgb``'s pixels, or ``None`` when there is no person
    (:meth:`handfit.detect.Detector.pose_landmarks`). The box is centred on
    the mean of the pose model's hand landmarks (pinky, index, thumb) and
    sized from the forearm and the wrist-to-hand distance, as the holistic
    graph does before its hand re-crop."""
    lm = pose_landmarks(rgb)
    if lm is None:
        return []
    lm = np.asarray(lm, np.float64)
    boxes = []
    for elbow, wrist, *fingers in _ARMS.values():
        if lm[wrist, 2] < min_visibility:
            continue
        w = lm[wrist, :2]
        f = lm[fingers, :2].mean(0)
        c = f  # the hand's centre: the pose model's hand landmarks lie beyond the wrist, on the hand
        forearm = np.linalg.norm(lm[elbow, :2] - w)
        size = max(0.7 * forearm, 2.5 * np.linalg.norm(f - w), 24.0)
        boxes.append((c[0] - size / 2, c[1] - size / 2, c[0] + size / 2, c[1] + size / 2))
    return boxes
