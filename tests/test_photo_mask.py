"""The photo's hand mask (GrabCut seeded by the mesh and the detected skeleton)
on synthetic scenes whose true mask is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handfit.camera import project
from handfit.models import load_model
from handfit.train.synth import make_scene
from handfit.fitting.photo_mask import dilate, erode, hand_probability, hand_probability_grabcut


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def scenes():
    m = load_model("anny")
    out = []
    for seed in (3, 8, 12):
        sc = make_scene(m, seed, size=(240, 320))
        out.append(sc)
    return out


def _shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    return np.roll(np.roll(mask, dy, 0), dx, 1)


@pytest.mark.slow
def test_grabcut_recovers_the_hand_from_a_misaligned_seed(scenes):
    """Seeded by the true mask moved by 6 px (a keypoint fit's misalignment), the
    GrabCut mask is closer to the truth than the seed, and better than the
    one-Gaussian colour model."""
    for sc in scenes:
        photo = torch.from_numpy(sc.image).float()[None] / 255
        seed = torch.from_numpy(_shifted(sc.mask, 6, -4))[None]
        p = hand_probability_grabcut(photo, seed)[0].numpy()
        assert p.min() >= 0 and p.max() <= 1
        got = p > 0.5
        q = hand_probability(photo, seed)[0].numpy() > 0.5
        assert iou(got, sc.mask) > max(iou(seed[0].numpy(), sc.mask), 0.85)
        assert iou(got, sc.mask) >= iou(q, sc.mask) - 0.02


def test_skeleton_keeps_fingers_the_seed_missed(scenes):
    """A seed with the fingers cut off: with the detected skeleton the fingers come
    back as hand; pixels on the skeleton are always hand."""
    sc = scenes[0]
    photo = torch.from_numpy(sc.image).float()[None] / 255
    kp = torch.from_numpy(sc.keypoints_2d).float()[None]
    yy, xx = np.mgrid[0:sc.mask.shape[0], 0:sc.mask.shape[1]]
    d = np.hypot(xx[..., None] - sc.keypoints_2d[:, 0], yy[..., None] - sc.keypoints_2d[:, 1])  # (H,W,21)
    palm_only = sc.mask & np.isin(d.argmin(-1), [0, 1, 2, 5, 9, 13, 17])  # pixels nearest a palm keypoint
    assert iou(palm_only, sc.mask) < 0.9
    without = hand_probability_grabcut(photo, torch.from_numpy(palm_only)[None])[0].numpy() > 0.5
    with_sk = hand_probability_grabcut(photo, torch.from_numpy(palm_only)[None], skeleton=kp)[0].numpy() > 0.5
    assert iou(with_sk, sc.mask) > iou(without, sc.mask)
    tips = np.round(sc.keypoints_2d[[6, 10, 14]]).astype(int)  # PIP joints: on the skeleton
    assert all(with_sk[y, x] for x, y in tips if 0 <= y < with_sk.shape[0] and 0 <= x < with_sk.shape[1])


def test_grabcut_is_deterministic_and_respects_valid(scenes):
    sc = scenes[1]
    photo = torch.from_numpy(sc.image).float()[None] / 255
    seed = torch.from_numpy(sc.mask)[None]
    valid = torch.ones_like(seed)
    valid[:, :, : sc.mask.shape[1] // 2] = False
    a = hand_probability_grabcut(photo, seed, valid)
    b = hand_probability_grabcut(photo, seed, valid)
    assert torch.equal(a, b)
    assert (a[~valid] == 0).all()


def test_grabcut_of_a_batch_is_each_crop_alone_in_any_thread_count(scenes, monkeypatch):
    """The crops of a batch are cut side by side (handfit.parallel.each): the same masks as one by one."""
    photo = torch.stack([torch.from_numpy(sc.image).float() / 255 for sc in scenes[:3]])
    seed = torch.stack([torch.from_numpy(sc.mask) for sc in scenes[:3]])
    alone = torch.cat([hand_probability_grabcut(photo[b:b + 1], seed[b:b + 1]) for b in range(3)])
    for threads in ("1", "2"):
        monkeypatch.setenv("HANDFIT_THREADS", threads)
        assert torch.equal(hand_probability_grabcut(photo, seed), alone)


@pytest.mark.parametrize("radius", [0, 1, 4, 8, 13])
def test_dilate_and_erode_match_square_max_pooling(radius):
    """The box-sum dilation is the square max-pool it replaced, borders included."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(radius)
    m = (torch.rand(3, 50, 70, generator=gen) > 0.93).float()
    m[:, 10:30, 20:45] = 1
    m[1, :, :3] = 1  # touching the border
    k = 2 * radius + 1
    assert torch.equal(dilate(m, radius), F.max_pool2d(m[:, None], k, 1, radius)[:, 0])
    assert torch.equal(erode(m, radius), -F.max_pool2d(-m[:, None], k, 1, radius)[:, 0])
