"""handfit.detect: offline MediaPipe hand landmarker on the dev photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest

from handfit.detect import Detection, Detector, task_file
from handfit.errors import BackendError
from handfit.io import load_image


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A .task bundle built in a temporary cache (never the user's)."""
    return task_file(cache=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def detector(task):
    with Detector(max_hands=2, task_path=task) as det:
        yield det


def _gt(path):
    with open(str(path) + ".gt.json") as f:
        return json.load(f)


def _check_detection(d: Detection, W: int, H: int):
    assert d.side in ("left", "right")
    assert 0.0 <= d.score <= 1.0
    assert d.keypoints.shape == (21, 2) and d.keypoints.dtype == np.float64
    assert d.keypoints_z.shape == (21,) and d.world.shape == (21, 3)
    x1, y1, x2, y2 = d.box_xyxy
    assert -0.5 <= x1 < x2 <= W - 0.5 and -0.5 <= y1 < y2 <= H - 0.5
    inside = np.clip(d.keypoints, [-0.5, -0.5], [W - 0.5, H - 0.5])
    assert (inside[:, 0] >= x1).all() and (inside[:, 0] <= x2).all()
    assert (inside[:, 1] >= y1).all() and (inside[:, 1] <= y2).all()
    span = np.linalg.norm(d.world[None] - d.world[:, None], axis=-1).max()
    assert 0.05 < span < 0.35  # metres: a human hand


# ---------------------------------------------------------------- the .task file


def test_task_file_is_stored_and_reused(tmp_path):
    p = task_file(cache=tmp_path)
    with zipfile.ZipFile(p) as z:
        infos = {i.filename: i for i in z.infolist()}
    assert set(infos) == {"hand_detector.tflite", "hand_landmarks_detector.tflite"}
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos.values())
    mtime = p.stat().st_mtime_ns
    assert task_file(cache=tmp_path) == p and p.stat().st_mtime_ns == mtime  # reused
    assert [q.name for q in tmp_path.iterdir()] == [p.name]  # no temp files left
    p.write_bytes(b"broken")  # a damaged bundle is rebuilt
    assert zipfile.is_zipfile(task_file(cache=tmp_path))


def test_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDFIT_CACHE", str(tmp_path / "c"))
    p = task_file()
    assert p.parent == tmp_path / "c" and p.is_file()


@pytest.mark.slow
def test_native_log_noise_is_silenced(task):
    code = (
        "import numpy as np\n"
        "from handfit.detect import Detector\n"
        f"d = Detector(task_path={str(task)!r})\n"
        "print(len(d.detect(np.zeros((240, 320, 3), np.uint8))))\n"
        "d.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"
    assert r.stderr.strip() == "", r.stderr


def test_close(task):
    det = Detector(task_path=task)
    det.close()
    det.close()  # idempotent
    with pytest.raises(BackendError):
        det.detect(np.zeros((64, 64, 3), np.uint8))


# ---------------------------------------------------------------- detection


def test_blank_image_has_no_hand(detector):
    assert detector.detect(np.zeros((480, 640, 3), np.uint8)) == []
    assert detector.detect(np.full((300, 200, 3), 255, np.uint8)) == []


@pytest.mark.devdata
def test_test5_left_and_right(detector, dev_data):
    photo = load_image(dev_data / "hamer" / "test5.jpg")
    dets = detector.detect(photo.rgb)
    assert len(dets) == 2
    assert {d.side for d in dets} == {"left", "right"}
    assert dets[0].score >= dets[1].score
    for d in dets:
        _check_detection(d, photo.width, photo.height)
    # she faces the camera: her right hand is on the image's left
    right = next(d for d in dets if d.side == "right")
    left = next(d for d in dets if d.side == "left")
    assert right.keypoints[0, 0] < left.keypoints[0, 0]


@pytest.mark.devdata
def test_test1_two_hands(detector, dev_data):
    photo = load_image(dev_data / "hamer" / "test1.jpg")
    dets = detector.detect(photo.rgb)
    assert len(dets) == 2
    for d in dets:
        _check_detection(d, photo.width, photo.height)


@pytest.mark.devdata
def test_max_hands(task, dev_data):
    with Detector(max_hands=1, task_path=task) as det:
        assert len(det.detect(load_image(dev_data / "hamer" / "test5.jpg").rgb)) == 1


@pytest.mark.devdata
def test_panoptic_sides_match_ground_truth(detector, dev_data):
    matched = 0
    for img in sorted((dev_data / "panoptic").glob("*.jpg")):
        gt = _gt(img)
        dets = detector.detect(load_image(img).rgb)
        for hand in gt["hands"]:
            if hand.get("side") is None:
                continue
            g = np.asarray(hand["keypoints_2d"], float)
            size = np.ptp(g, axis=0).max()
            errs = [np.linalg.norm(d.keypoints - g, axis=1).mean() for d in dets]
            if not errs or min(errs) > 0.5 * size:
                continue  # not found (tiny hands in the 1280x720 photo)
            best = dets[int(np.argmin(errs))]
            assert best.side == hand["side"], (img.name, best.side, hand["side"])
            matched += 1
    assert matched >= 2


@pytest.mark.devdata
@pytest.mark.parametrize("name", ["00000355.jpg", "00017620.jpg", "00082740.jpg"])
def test_freihand_keypoint_error(detector, dev_data, name):
    img = dev_data / "freihand" / name
    g = np.asarray(_gt(img)["hands"][0]["keypoints_2d"], float)
    dets = detector.detect(load_image(img).rgb)
    assert len(dets) >= 1
    err = min(np.linalg.norm(d.keypoints - g, axis=1).mean() for d in dets)
    assert err < 15.0, err  # pixels at 224x224 (about 11 px: joint definitions differ)


@pytest.mark.devdata
def test_tfjs_reference_keypoints(detector, dev_data):
    """MediaPipe's own reference output for hands.jpg, 20 px tolerance."""
    img = dev_data / "tfjs_models" / "hands.jpg"
    dets = detector.detect(load_image(img).rgb)
    assert len(dets) == 2
    for hand in _gt(img)["hands"]:
        g = np.asarray(hand["keypoints_2d"], float)
        err = min(np.abs(d.keypoints - g).max() for d in dets)
        assert err < 20.0


@pytest.mark.devdata
def test_landmarks_each_matches_one_call_after_another(task, dev_data, monkeypatch):
    """Several landmarkers in threads give each view what one landmarker gives it alone."""
    monkeypatch.setenv("HANDFIT_THREADS", "2")
    rgb = load_image(dev_data / "tfjs_models" / "hands.jpg").rgb
    views = [rgb, rgb[:, ::-1], cv2.resize(rgb, None, fx=0.5, fy=0.5), np.zeros((64, 64, 3), np.uint8), rgb[::2, ::2]]
    with Detector(max_hands=2, task_path=task) as det:
        alone = [det.landmarks(v) for v in views]
        together = det.landmarks_each(views)
        assert len(det._twins) == 1
    assert [len(d) for d in alone] == [len(d) for d in together] and sum(map(len, alone)) >= 3
    for a, b in zip(alone, together):
        for x, y in zip(a, b):
            assert x.side == y.side and x.score == y.score
            np.testing.assert_array_equal(x.keypoints, y.keypoints)
            np.testing.assert_array_equal(x.world, y.world)
    with pytest.raises(BackendError):
        det.landmarks_each(views)


@pytest.mark.devdata
def test_large_image_is_downscaled_and_mapped_back(detector, dev_data):
    rgb = load_image(dev_data / "hamer" / "test5.jpg").rgb
    s = 2.5
    big = cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
    assert max(big.shape[:2]) > detector.max_side
    small_dets = detector.detect(rgb)
    big_dets = detector.detect(big)
    assert [d.side for d in big_dets] == [d.side for d in small_dets]
    for a, b in zip(small_dets, big_dets):
        expect = (a.keypoints + 0.5) * s - 0.5  # pixel-centre convention under scaling
        err = np.linalg.norm(b.keypoints - expect, axis=1).mean()
        assert err < 8.0, err  # big-image pixels; the hands are ~1100 px tall there
        np.testing.assert_allclose(b.box_xyxy, (a.box_xyxy + 0.5) * s - 0.5, atol=25)
        np.testing.assert_allclose(b.keypoints_z, a.keypoints_z * s, atol=0.02 * s * 1200)
        np.testing.assert_allclose(b.world, a.world, atol=0.01)


@pytest.mark.devdata
def test_accepts_other_inputs(detector, dev_data):
    path = dev_data / "freihand" / "00000355.jpg"
    a = detector.detect(load_image(path).rgb)
    b = detector.detect(path)  # a path goes through load_image
    c = detector.detect(load_image(path).rgb.astype(np.float32) / 255.0)
    assert len(a) == len(b) == len(c) == 1
    np.testing.assert_allclose(a[0].keypoints, b[0].keypoints)
    np.testing.assert_allclose(a[0].keypoints, c[0].keypoints, atol=1.0)


def test_overlapping_quiet_blocks_restore_stderr():
    """Quiet blocks in two threads that overlap (A in, B in, A out, B out) must
    leave fd 2 where it was: a block restoring on its own would restore A's
    temporary file and lose every later line of stderr (batch's summary did)."""
    import os
    import threading

    from handfit.detect.quiet import quiet_stderr

    before = os.fstat(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def block_a():
        with quiet_stderr():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    t = threading.Thread(target=block_a)
    t.start()
    a_in.wait(10)
    with quiet_stderr():
        b_in.set()
        a_out.wait(10)
    t.join(10)
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
