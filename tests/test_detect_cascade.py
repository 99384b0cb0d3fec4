"""The detection cascade (handfit.detect.passes), box input, ``handfit detect`` and
a scene with more than two hands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from handfit.detect import passes as dp
from handfit.detect import HAND_CAP, Detection, Detector, task_file


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return task_file(cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def detector(task):
    with Detector(task_path=task, mode="thorough") as det:
        yield det


def _det(kp, side="left", score=0.9, name="full", W=320, H=240):
    world = np.random.default_rng(0).normal(0, 0.03, (21, 3))
    kp = np.asarray(kp, float)
    return Detection(side=side, score=score, box_xyxy=dp.hand_box(kp, 0.1, 10_000, 10_000), keypoints=kp,
                     keypoints_z=np.zeros(21), world=world, image_size=(W, H), pass_name=name)


def _views(rgb):
    H, W = rgb.shape[:2]
    return (dp.tile_views(rgb) + [dp.rotate_view(rgb, k) for k in (1, 2, 3)] + [dp.mirror_view(rgb)]
            + [dp.square_box_view(rgb, (40.3, 30.7, 150.2, 170.9), "box")])


# ---------------------------------------------------------------- mapping back, synthetic


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(240, 320), (333, 211)])
def test_views_map_points_back_exactly(shape):
    """A bright pixel at a known place is found in each view where M says, and maps back."""
    H, W = shape
    gen = np.random.default_rng(1)
    pts = np.stack([gen.integers(5, W - 5, 40), gen.integers(5, H - 5, 40)], 1).astype(float)
    for u, v in pts:
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[int(v), int(u)] = 255
        for view in _views(rgb):
            img = view.image[..., 0].astype(float)
            if img.sum() == 0:  # the point is outside this tile
                continue
            yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
            found = np.array([(xx * img).sum(), (yy * img).sum()]) / img.sum()  # centroid, view pixels
            expect = view.M @ np.array([u, v, 1.0])
            if view.name in ("rotate", "mirror"):
                np.testing.assert_array_equal(found, expect)  # exact pixel copies
            else:
                # bilinear interpolation of one pixel: its centroid is where M puts it, unless
                # clipped, to OpenCV's 1/32-pixel fixed-point interpolation and uint8 rounding
                inside = (expect > 1).all() and expect[0] < img.shape[1] - 2 and expect[1] < img.shape[0] - 2
                if inside:
                    np.testing.assert_allclose(found, expect, atol=0.1)
            back = dp.map_back(_det(np.tile(found, (21, 1))), view, W, H).keypoints[0]
            if view.name in ("rotate", "mirror"):
                np.testing.assert_allclose(back, [u, v], atol=1e-9)
            elif inside:
                np.testing.assert_allclose(back, [u, v], atol=0.1 / abs(view.M[0, 0]))


def test_map_back_inverts_the_affine_for_keypoints_boxes_and_world():
    H, W = 240, 320
    rgb = np.zeros((H, W, 3), np.uint8)
    gen = np.random.default_rng(2)
    kp_full = gen.uniform([20, 20], [300, 220], (21, 2))
    for view in _views(rgb):
        kp_view = kp_full @ view.M[:, :2].T + view.M[:, 2]
        d = _det(kp_view)
        back = dp.map_back(d, view, W, H)
        np.testing.assert_allclose(back.keypoints, kp_full, atol=1e-9)
        assert back.image_size == (W, H) and back.pass_name == view.name
        lo, hi = kp_full.min(0), kp_full.max(0)
        assert back.box_xyxy[0] <= lo[0] and back.box_xyxy[2] >= min(hi[0], W - 0.5)
        # world landmarks: distances kept (a rotation or a reflection of x, y)
        dist = lambda w: np.linalg.norm(w[None] - w[:, None], axis=-1)  # noqa: E731
        np.testing.assert_allclose(dist(back.world), dist(d.world), atol=1e-12)


def test_rotation_turns_world_landmarks_back():
    """A hand pointing up in the photo points left in the 90° view; mapped back it points up again."""
    rgb = np.zeros((100, 200, 3), np.uint8)
    view = dp.rotate_view(rgb, 1)  # counter-clockwise: image up becomes view left
    d = _det(np.zeros((21, 2)))
    d.world[:] = 0
    d.world[12] = [-0.1, 0.0, 0.0]  # fingertip to the left of the wrist in the view
    back = dp.map_back(d, view, 200, 100)
    np.testing.assert_allclose(back.world[12], [0.0, -0.1, 0.0], atol=1e-12)  # up (y down) in the photo


def test_mirrored_pass_swaps_the_side():
    rgb = np.zeros((120, 160, 3), np.uint8)
    view = dp.mirror_view(rgb)
    assert view.mirrored
    for side, other in (("left", "right"), ("right", "left")):
        d = _det(np.random.default_rng(3).uniform(10, 100, (21, 2)), side=side)
        back = dp.map_back(d, view, 160, 120)
        assert back.side == other
        np.testing.assert_allclose(back.world[:, 0], -d.world[:, 0])
        np.testing.assert_allclose(back.world[:, 1:], d.world[:, 1:])
        np.testing.assert_allclose(back.keypoints[:, 0], 159 - d.keypoints[:, 0])


def test_duplicates_across_passes_are_merged():
    gen = np.random.default_rng(4)
    a = gen.uniform(50, 150, (21, 2))
    far = a + 200
    part = a[[0, 1, 2, 5, 6, 9, 10, 13, 14, 17, 18] * 2][:21] * 0.5 + a.mean(0) * 0.5  # inside a's box
    dets = [_det(a + gen.normal(0, 1, a.shape), score=0.7, name="tiles"),
            _det(a, score=0.6, name="full"),
            _det(a + gen.normal(0, 2, a.shape), score=0.95, name="rotate"),
            _det(part, score=0.99, side="right", name="tiles"),  # part of the hand seen as a hand
            _det(far, score=0.8, name="mirror")]
    out = dp.merge(dets)
    assert len(out) == 2
    hand = next(d for d in out if np.allclose(d.keypoints.mean(0), a.mean(0), atol=5))
    assert hand.pass_name == "full"          # the full pass's landmarks are kept ...
    # ... with the best score of the group, lowered by the other side's opinion of the part-hand
    assert hand.score == pytest.approx(0.5 * (0.95 + 1 - 0.99))
    assert {d.pass_name for d in out} == {"full", "mirror"}
    assert [d.score for d in out] == sorted([d.score for d in out], reverse=True)


def test_plausibility_rejects_tiny_and_malformed_hands():
    view = (400, 400)
    d = _det(np.random.default_rng(5).uniform(100, 300, (21, 2)))
    # a hand-like world skeleton: palm 9 cm, fingers shorter
    w = np.zeros((21, 3))
    for f, base in enumerate((1, 5, 9, 13, 17)):
        w[base] = [(f - 2) * 0.02, -0.07 if f else -0.03, 0]
        for j in range(1, 4):
            w[base + j] = w[base] + [0, -0.025 * j, 0]
    w[9] = [0, -0.09, 0]
    d.world = w
    d.keypoints[0] = [200, 300]
    d.keypoints[9] = [200, 150]
    assert dp.plausible(d, view)
    tiny = _det(d.keypoints * 0.05)
    tiny.world = w
    assert not dp.plausible(tiny, view)
    huge = _det(d.keypoints)
    huge.world = w * 4
    assert not dp.plausible(huge, view)


# ---------------------------------------------------------------- with MediaPipe


def test_modes_and_cap(task):
    with Detector(task_path=task) as det:
        assert det.mode == "fast" and det.max_hands == HAND_CAP
        assert det.detect(np.zeros((120, 160, 3), np.uint8), mode="thorough") == []
    from handfit.errors import UsageError

    with pytest.raises(UsageError):
        Detector(task_path=task, mode="slow")


@pytest.mark.devdata
def test_mirrored_pass_on_a_photo_gives_the_same_sides(detector, dev_data):
    from handfit.io import load_image

    rgb = load_image(dev_data / "hamer" / "test5.jpg").rgb
    H, W = rgb.shape[:2]
    full = detector.detect(rgb, passes=("full",))
    view = dp.mirror_view(rgb)
    mirrored = [dp.map_back(d, view, W, H) for d in detector.landmarks(view.image)]
    assert len(full) == 2 and len(mirrored) == 2
    for d in full:
        m = min(mirrored, key=lambda e: np.linalg.norm(e.keypoints - d.keypoints, axis=1).mean())
        assert m.side == d.side
        assert np.linalg.norm(m.keypoints - d.keypoints, axis=1).mean() < 0.1 * dp.hand_size(d.keypoints)


@pytest.mark.devdata
def test_thorough_finds_the_small_hands(detector, dev_data):
    """panoptic/005880453: two small hands in a 1280x720 photo that the full pass misses."""
    from handfit.io import load_image

    img = dev_data / "panoptic" / "005880453_01_l.jpg"
    rgb = load_image(img).rgb
    assert detector.detect(rgb, mode="fast") == []
    dets = detector.detect(rgb)
    assert dets and all(d.pass_name != "full" for d in dets)
    found = 0
    for name in ("005880453_01_l.jpg", "005880453_01_r.jpg"):
        g = json.loads((dev_data / "panoptic" / (name + ".gt.json")).read_text())["hands"][0]
        kp = np.asarray(g["keypoints_2d"], float)
        diag = np.hypot(*g["bbox_xywh"][2:])
        found += min(np.linalg.norm(d.keypoints - kp, axis=1).mean() for d in dets) < 0.25 * diag
    assert found >= 1


@pytest.mark.devdata
def test_box_input(detector, dev_data):
    from handfit.io import load_image

    rgb = load_image(dev_data / "hamer" / "test5.jpg").rgb
    full = detector.detect(rgb, mode="fast")
    boxes = [tuple(d.box_xyxy) for d in full]
    got = detector.detect_in_boxes(rgb, boxes + [(0, 0, 120, 120)])  # the last box holds no hand
    assert len(got) == len(full)
    for d, g in zip(full, got):
        assert g.pass_name == "box" and g.side == d.side
        assert np.linalg.norm(g.keypoints - d.keypoints, axis=1).mean() < 0.1 * dp.hand_size(d.keypoints)
    other = {"left": "right", "right": "left"}[full[0].side]
    forced = detector.detect_in_boxes(rgb, [boxes[0] + (other,)])
    assert forced[0].side == other and forced[0].side_source == "user"
    from handfit.errors import UsageError

    with pytest.raises(UsageError):
        detector.detect_in_boxes(rgb, [(10, 10, 5, 50)])


# ---------------------------------------------------------------- passes as functions of a landmark call


def test_passes_take_a_landmark_callable():
    """The passes only use the callables they are given: no Detector needed."""
    rgb = np.zeros((240, 320, 3), np.uint8)
    seen = []

    def landmarks(image, strict=False):
        seen.append((image.shape, strict))
        return []

    assert dp.run_extra_passes(landmarks, rgb, ("tiles", "rotate", "mirror", "contrast")) == []
    n = len(dp.tile_views(rgb)) + 3 + 1 + 1
    assert len(seen) == n and all(strict for _, strict in seen)
    seen.clear()
    assert dp.detect_in_box(landmarks, rgb, (40, 30, 150, 170), "box") is None
    assert len(seen) == 4 and not any(strict for _, strict in seen)  # 0, 90, 270, 180 degrees
    with pytest.raises(ValueError):
        dp.run_extra_passes(landmarks, rgb, ("pose",))

    lm = np.zeros((33, 3))
    lm[:, 2] = 1.0
    lm[[13, 15, 17, 19, 21], :2] = [[100, 100], [100, 160], [95, 180], [105, 180], [110, 175]]
    lm[[14, 16, 18, 20, 22], 2] = 0.0  # the right arm is not visible
    boxes = dp.pose_hand_boxes(lambda img: lm, rgb)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert x0 < 100 < x1 and y0 < 178 < y1
    assert dp.pose_hand_boxes(lambda img: None, rgb) == []


def test_pose_model_is_built_once_by_concurrent_calls(task, monkeypatch):
    """Two threads running the pose-guided pass at once on a fresh detector
    build the pose model once: it is created under the detector's lock."""
    import threading
    import time
    from types import SimpleNamespace

    from handfit.detect import detector as detector_mod

    built = []

    class SlowPose:
        def __init__(self):
            built.append(self)
            time.sleep(0.3)  # a window in which a racing thread would build another

        def process(self, rgb):
            return SimpleNamespace(pose_landmarks=None)

        def close(self):
            pass

    monkeypatch.setattr(detector_mod, "_make_pose", lambda quiet: SlowPose())
    rgb = np.zeros((120, 160, 3), np.uint8)
    with Detector(task_path=task) as det:
        start = threading.Barrier(2)
        results, errors = [], []

        def run():
            try:
                start.wait(10)
                results.append(det.detect(rgb, passes=("pose",)))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and results == [[], []]
        assert len(built) == 1 and det._pose is built[0]
        assert det.pose_landmarks(rgb) is None and len(built) == 1  # reused


def test_detect_overlay_uses_the_one_skeleton():
    """``handfit detect``'s overlay, the fit overlay and the models draw
    handfit.keypoints.SKELETON: MediaPipe's connections (the knuckle line 5-9,
    not the wrist-to-middle-base bone 0-9)."""
    from handfit import keypoints
    from handfit.cli import detect as cli_detect
    from handfit.io import overlay

    assert cli_detect.SKELETON is keypoints.SKELETON and overlay.SKELETON is keypoints.SKELETON
    assert not hasattr(dp, "_BONES") and not hasattr(cli_detect, "_BONES")
    kp = np.array([[100, 190], [60, 170], [30, 150], [10, 130], [0, 110],
                   [40, 100], [40, 70], [40, 50], [40, 30],
                   [80, 100], [80, 70], [80, 50], [80, 30],
                   [120, 100], [120, 70], [120, 50], [120, 30],
                   [160, 100], [160, 70], [160, 50], [160, 30]], float)
    d = _det(kp, side="right", W=200, H=200)
    img = cli_detect.draw_detections(np.zeros((200, 200, 3), np.uint8), [d])
    assert img[100, 60].any()        # midpoint of 5-9: drawn
    assert not img[145, 90].any()    # midpoint of 0-9: not a MediaPipe connection


# ---------------------------------------------------------------- CLI


def test_detect_cli_json_schema(dev_data, tmp_path):
    from click.testing import CliRunner

    from handfit.cli import main

    img = dev_data / "hamer" / "test5.jpg"
    r = CliRunner().invoke(main, ["detect", str(img), "--json", "-o", str(tmp_path), "--detect", "fast"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout.strip().splitlines()[0])
    assert set(doc) == {"image", "hands"}
    assert set(doc["image"]) == {"path", "width", "height"}
    assert (doc["image"]["width"], doc["image"]["height"]) == (1200, 1799)
    assert len(doc["hands"]) == 2
    for h in doc["hands"]:
        assert set(h) == {"side", "score", "bbox_xyxy", "keypoints_2d", "keypoints_3d_world", "pass"}
        assert h["side"] in ("left", "right") and 0 <= h["score"] <= 1 and h["pass"] == "full"
        assert np.asarray(h["bbox_xyxy"]).shape == (4,)
        assert np.asarray(h["keypoints_2d"]).shape == (21, 2)
        assert np.asarray(h["keypoints_3d_world"]).shape == (21, 3)
    assert (tmp_path / "test5" / "overlay.png").is_file()
    assert json.loads((tmp_path / "test5" / "detections.json").read_text()) == doc


def test_detect_cli_exit_codes(tmp_path):
    import imageio.v3 as iio
    from click.testing import CliRunner

    from handfit.cli import main
    from handfit.options import FitOptions

    assert FitOptions().max_hands is None and FitOptions().detect == "thorough"
    assert f"at most {HAND_CAP}" in CliRunner().invoke(main, ["fit", "--help"]).output
    blank = tmp_path / "blank.png"
    iio.imwrite(blank, np.full((64, 80, 3), 128, np.uint8))
    r = CliRunner().invoke(main, ["detect", str(blank), "--detect", "fast"])
    assert r.exit_code == 3
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert CliRunner().invoke(main, ["detect", str(bad)]).exit_code == 4
    assert CliRunner().invoke(main, ["fit", str(blank), "--box", "1,2,3"]).exit_code == 2


# ---------------------------------------------------------------- a crowd


@pytest.fixture(scope="module")
def four_hands():
    """Four rendered hands (240x240 each, seeds MediaPipe detects) in a 480x480 photo."""
    import torch

    from handfit.models import load_model
    from handfit.train.synth import make_scene

    models = {s: load_model("anny", side=s, device=torch.device("cpu"), dtype=torch.float32)
              for s in ("left", "right")}
    tiles = [make_scene(models[side], seed, size=(240, 240)).image
             for seed, side in ((2, "right"), (9, "left"), (10, "right"), (11, "left"))]
    return np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)


@pytest.mark.slow
def test_more_than_two_hands_are_fitted_by_default(four_hands):
    import handfit
    from handfit.fitting.keypoint import KeypointStage

    res = handfit.fit(four_hands, dense=handfit.DenseStage(enabled=False), device="cpu",  # default detection: thorough
                      keypoint=KeypointStage(iters=15))
    assert res.hands_found >= 3
    assert len(res.hands) == res.hands_found > 2
    doc = res.to_dict()
    assert doc["hands_found"] == res.hands_found
    for h in doc["hands"]:
        assert h["side_source"] in ("detector", "fit") and h["pass"] in dp.PASSES
    capped = handfit.fit(four_hands, dense=handfit.DenseStage(enabled=False), device="cpu", max_hands=2,
                         keypoint=KeypointStage(iters=5))
    assert len(capped.hands) == 2 and capped.hands_found == res.hands_found
