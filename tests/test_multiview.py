"""Multi-view 2D evidence (handfit.detect.multiview): exact views, fusion, refine with a
fake landmark model, and the per-keypoint weights it hands the keypoint stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handfit.detect import Detection
from handfit.detect import multiview as mv
from handfit.detect import passes as dp


def _det(kp, side="left", W=320, H=240, world=None):
    kp = np.asarray(kp, float)
    world = np.random.default_rng(0).normal(0, 0.03, (21, 3)) if world is None else world
    return Detection(side=side, score=0.9, box_xyxy=dp.hand_box(kp, 0.1, W, H), keypoints=kp,
                     keypoints_z=np.linspace(-5, 5, 21), world=world, image_size=(W, H))


def _hand(seed=0, centre=(160.0, 120.0), size=60.0):
    g = np.random.default_rng(seed)
    return np.asarray(centre) + g.uniform(-size / 2, size / 2, (21, 2))


@pytest.mark.parametrize("angle,scale,mirrored", [(0, 1, False), (15, 1, True), (-30, 0.8, False),
                                                  (30, 0.8, True), (7.5, 1.3, True)])
def test_affine_view_maps_keypoints_and_world_back_exactly(angle, scale, mirrored):
    """A hand drawn into a rotated/scaled/mirrored view, as the landmark model would report
    it there (pixels through M, world turned with the view, side swapped when mirrored),
    comes back to the original keypoints, world landmarks and side."""
    rgb = np.zeros((240, 320, 3), np.uint8)
    kp = _hand(1)
    world = np.random.default_rng(2).normal(0, 0.03, (21, 3))
    view = mv.affine_view(rgb, (150.3, 118.7), 90.0 / scale, angle, mirrored, out=256)
    A, t = view.M[:, :2], view.M[:, 2]
    s = np.sqrt(abs(np.linalg.det(A)))
    np.testing.assert_allclose(s, 256 / (90.0 / scale))
    assert (np.linalg.det(A) < 0) == mirrored
    R = A / s
    seen_world = world.copy()
    seen_world[:, :2] = world[:, :2] @ R.T            # image axes -> view axes
    seen = Detection(side="right" if mirrored else "left", score=0.9, box_xyxy=np.zeros(4),
                     keypoints=kp @ A.T + t, keypoints_z=np.full(21, 3.0) * s, world=seen_world, image_size=(256, 256))
    back = dp.map_back(seen, view, 320, 240)
    np.testing.assert_allclose(back.keypoints, kp, atol=1e-9)
    np.testing.assert_allclose(back.world, world, atol=1e-12)
    np.testing.assert_allclose(back.keypoints_z, 3.0, atol=1e-12)
    assert back.side == "left"


def test_affine_view_pixels_land_where_M_says():
    """A bright pixel's centroid in the warped view is at M @ (u, v, 1) (pixel-centre convention)."""
    for u, v in [(100, 80), (170, 130), (140, 95)]:
        rgb = np.zeros((240, 320, 3), np.uint8)
        rgb[v - 1:v + 2, u - 1:u + 2] = 255       # a 3x3 blob: its centroid survives bilinear warps
        for angle, scale, mirrored in mv.VIEW_SET:
            view = mv.affine_view(rgb, (140.0, 110.0), 120.0 / scale, angle, mirrored, out=256)
            img = view.image[..., 0].astype(float)
            yy, xx = np.mgrid[0:256, 0:256]
            found = np.array([(xx * img).sum(), (yy * img).sum()]) / img.sum()
            np.testing.assert_allclose(found, view.M @ np.array([u, v, 1.0]), atol=0.05)


def test_view_specs_prefixes():
    assert mv.view_specs(2) == ((0.0, 1.0, False), (0.0, 1.0, True))
    assert len(mv.view_specs(20)) == 20 == len(set(mv.VIEW_SET))
    with pytest.raises(ValueError):
        mv.view_specs(21)


def test_fuse_is_the_median_and_drops_an_outlier_view():
    kp = _hand(3)
    g = np.random.default_rng(4)
    views = np.stack([kp + g.normal(0, 0.5, kp.shape) for _ in range(5)])
    bad = kp + 25.0                                    # a view that saw the hand shifted
    fused, spread, keep = mv.fuse(np.concatenate([views, bad[None]]))
    assert keep.tolist() == [True] * 5 + [False]
    np.testing.assert_allclose(fused, np.median(views, axis=0))
    np.testing.assert_allclose(spread, np.median(np.linalg.norm(views - fused, axis=-1), axis=0))
    assert spread.shape == (21,) and spread.max() < 2.0
    # two views: both kept, the median is their mean
    fused2, _, keep2 = mv.fuse(views[:2])
    assert keep2.all()
    np.testing.assert_allclose(fused2, views[:2].mean(0))


def test_refine_with_a_fake_landmark_model():
    """A fake landmark model that reports the true hand in each view (mapped through the
    view's M, world turned, side swapped in mirrored views) plus noise, and a stray hand
    of the other side; refine fuses the views, ignores the stray hand and the other side."""
    W, H = 320, 240
    truth = _hand(5)
    world = np.random.default_rng(6).normal(0, 0.03, (21, 3))
    det = _det(truth + 3.0, W=W, H=H, world=world)      # the single detection, 3 px off
    views = {id(v.image): v for v in []}
    g = np.random.default_rng(7)
    made = []

    orig_hand_views = mv.hand_views

    def hand_views(rgb, d, n, **kw):
        vs = orig_hand_views(rgb, d, n, **kw)
        made.extend(vs)
        views.update({id(v.image): v for v in vs})
        return vs

    def landmarks(image, strict=False):
        v = views[id(image)]
        A, t = v.M[:, :2], v.M[:, 2]
        s = np.sqrt(abs(np.linalg.det(A)))
        w = world.copy()
        w[:, :2] = world[:, :2] @ (A / s).T
        side = "right" if v.mirrored else "left"
        hand = Detection(side=side, score=0.9, box_xyxy=np.zeros(4), keypoints=(truth + g.normal(0, 0.3, (21, 2))) @ A.T + t,
                         keypoints_z=np.zeros(21), world=w, image_size=(256, 256))
        other = Detection(side="left" if v.mirrored else "right", score=0.9, box_xyxy=np.zeros(4),
                          keypoints=hand.keypoints + 1.0, keypoints_z=np.zeros(21), world=w, image_size=(256, 256))
        return [other, hand]

    mv.hand_views = hand_views
    try:
        out = mv.refine(landmarks, np.zeros((H, W, 3), np.uint8), det, views=8)
    finally:
        mv.hand_views = orig_hand_views
    assert len(made) == 8 and out.views == 8
    assert np.abs(out.keypoints - truth).max() < 1.0
    np.testing.assert_allclose(out.world, world, atol=1e-12)
    assert out.keypoint_spread.shape == (21,) and out.keypoint_spread.max() < 1.0
    assert out.side == "left"
    assert mv.refine(landmarks, np.zeros((H, W, 3), np.uint8), det, views=0) is det


def test_refine_keeps_the_detection_when_no_view_agrees():
    det = _det(_hand(8))
    out = mv.refine(lambda image, strict=False: [], np.zeros((240, 320, 3), np.uint8), det, views=4)
    assert out is det and out.keypoint_spread is None and out.views == 0


def test_batch_carries_spread_weights():
    from handfit.fitting.hands import to_batch

    K = np.eye(3)
    a = _det(_hand(9))
    b = mv.combine(a, [_det(_hand(9) + d) for d in (0.0, 0.5, -0.5)])   # refined: spread present
    assert b.keypoint_spread is not None
    assert to_batch([(K, a)], "cpu").kp_weight is None                    # no spread: today's batch
    batch = to_batch([(K, a), (K, b)], "cpu")
    assert batch.kp_weight.shape == (2, 21)
    assert torch.all(batch.kp_weight[0] == 1) and torch.all(batch.kp_weight[1] <= 1)
    assert batch.select([1]).kp_weight.shape == (1, 21)
    np.testing.assert_allclose(mv.spread_weight(np.array([0.0, 2.0]), 100.0, 0.02), [1.0, 0.5])
    np.testing.assert_allclose(mv.spread_weight(np.array([0.0, 2.0]), 100.0, 0.0), [1.0, 1.0])


def test_options_views_bounds():
    from handfit.options import FitOptions, OptionError

    assert FitOptions().views == mv.DEFAULT_VIEWS
    assert FitOptions(views=8).views == 8
    for bad in (-1, 21):
        with pytest.raises(OptionError):
            FitOptions(views=bad)
