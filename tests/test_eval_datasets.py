"""Each dataset reader on a tiny sample that the test writes in the dataset's own layout."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from handfit.eval.datasets import DatasetError, detect_format, open_dataset, select
from handfit.eval.records import FROM_INTERHAND, FROM_MANO_TIPS, FROM_RHD, MEDIAPIPE_NAMES, project_points

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
# Each dataset's joint names in its own order, written out from its documentation.
MANO_TIPS_NAMES = (["wrist"] + [f"{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb") for i in (1, 2, 3)]
                   + [f"{f}4" for f in FINGERS])
INTERHAND_NAMES = [f"{f}{i}" for f in FINGERS for i in (4, 3, 2, 1)] + ["wrist"]
RHD_NAMES = ["wrist"] + [f"{f}{i}" for f in FINGERS for i in (4, 3, 2, 1)]


@pytest.mark.parametrize("names, index", [(MANO_TIPS_NAMES, FROM_MANO_TIPS), (INTERHAND_NAMES, FROM_INTERHAND),
                                          (RHD_NAMES, FROM_RHD)], ids=["mano+tips", "interhand", "rhd"])
def test_keypoint_orders_map_names_to_mediapipe(names, index):
    assert sorted(index) == list(range(21))
    assert [names[i] for i in index] == MEDIAPIPE_NAMES


def _hand(seed=0, z=0.5):
    """A (21,3) hand in MediaPipe order, OpenCV camera frame, metres, in front of the camera."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(21, 3)) * 0.03 + [0.01, -0.02, z]


def _to_source(mp, index):
    """MediaPipe-ordered points -> the dataset's order (inverse of records' maps)."""
    src = np.empty_like(mp)
    src[index] = mp
    return src


def _image(path, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path)


K = np.array([[500.0, 0, -40.0], [0, 480.0, 300.0], [0, 0, 1]])  # principal point outside the image, fx != fy


def test_dev3d(tmp_path):
    hand = _hand(1)
    order = list(reversed(MEDIAPIPE_NAMES))                      # a permuted order must be undone
    perm = [MEDIAPIPE_NAMES.index(n) for n in order]
    _image(tmp_path / "set" / "a.jpg")
    (tmp_path / "set" / "a.jpg.gt.json").write_text(json.dumps({
        "K": K.tolist(), "keypoint_order": order,
        "hands": [{"side": "left", "keypoints_3d_cam_mm": (hand[perm] * 1000).tolist(),
                   "keypoints_2d": project_points(hand, K)[perm].tolist()}]}))
    _image(tmp_path / "set" / "b.png")                          # 2D-only labels, no K
    (tmp_path / "set" / "b.png.gt.json").write_text(json.dumps({
        "hands": [{"side": None, "keypoints_2d": np.ones((21, 2)).tolist(), "visible": [1] * 20 + [0]}]}))
    assert detect_format(tmp_path) == "dev3d"
    a, b = select(open_dataset(tmp_path))
    assert a.name == "set/a.jpg" and a.image == tmp_path / "set" / "a.jpg" and np.allclose(a.K, K)
    assert a.hands[0].side == "left" and np.allclose(a.hands[0].keypoints_3d, hand)
    assert np.allclose(a.keypoints_2d(a.hands[0]), project_points(hand, K))
    assert b.K is None and b.hands[0].keypoints_3d is None and b.hands[0].side is None
    assert b.hands[0].visible.sum() == 20


def test_freihand(tmp_path):
    hands = [_hand(i) for i in range(2)]
    for split in ("training",):
        (tmp_path / f"{split}_K.json").write_text(json.dumps([K.tolist()] * 2))
        (tmp_path / f"{split}_xyz.json").write_text(json.dumps([h.tolist() for h in hands]))
        for i in range(4):                                          # 2 samples x 2 background versions
            _image(tmp_path / split / "rgb" / f"{i:08d}.jpg")
    assert detect_format(tmp_path) == "freihand"
    recs = select(open_dataset(tmp_path))
    assert [r.name for r in recs] == ["training/00000000.jpg", "training/00000001.jpg"]
    assert np.allclose(recs[1].hands[0].keypoints_3d, hands[1]) and recs[1].hands[0].side == "right"
    from handfit.eval.datasets import read_freihand

    recs = list(read_freihand(tmp_path, versions="all"))
    assert [r.image.name for r in recs] == ["00000000.jpg", "00000002.jpg", "00000001.jpg", "00000003.jpg"]
    assert np.allclose(recs[1].hands[0].keypoints_3d, hands[0])   # version 1 of sample 0
    (tmp_path / "training_xyz.json").write_text(json.dumps([hands[0].tolist()]))
    with pytest.raises(DatasetError, match="entries"):
        select(open_dataset(tmp_path))


def test_ho3d(tmp_path):
    hand = _hand(3)
    gl = _to_source(hand, FROM_MANO_TIPS) * [1, -1, -1]             # OpenGL axes, MANO order + tips
    seq = tmp_path / "train" / "ABF10"
    (seq / "meta").mkdir(parents=True)
    (seq / "meta" / "0000.pkl").write_bytes(pickle.dumps(
        {"handJoints3D": gl.astype(np.float32), "camMat": K, "objName": "019_pitcher_base", "handBeta": None},
        protocol=2))
    (seq / "meta" / "0001.pkl").write_bytes(pickle.dumps({"handJoints3D": gl[0], "camMat": K}, protocol=2))
    _image(seq / "rgb" / "0000.jpg")                                 # v3 names images .jpg
    assert detect_format(tmp_path) == "ho3d"
    recs = select(open_dataset(tmp_path))
    assert len(recs) == 1                                            # the wrist-only frame is skipped
    r = recs[0]
    assert r.name == "ABF10/0000.jpg" and r.image.is_file() and r.hands[0].side == "right"
    assert np.allclose(r.hands[0].keypoints_3d, hand, atol=1e-6)
    assert (r.hands[0].keypoints_3d[:, 2] > 0).all()                # in front of the OpenCV camera
    assert len(select(open_dataset(seq, format="ho3d"))) == 1        # a sequence folder works too

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    (seq / "meta" / "0002.pkl").write_bytes(pickle.dumps({"handJoints3D": Evil(), "camMat": K}, protocol=2))
    with pytest.raises(DatasetError, match="refused"):
        select(open_dataset(tmp_path))


def test_interhand(tmp_path):
    right, left = _hand(4), _hand(5)
    ang = 0.3
    R = np.array([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]])  # world -> camera
    campos = np.array([100.0, -50.0, 30.0])                           # mm
    def world(h):                                                     # camera metres -> world mm, InterHand order
        return _to_source(h * 1000 @ R + campos, FROM_INTERHAND)      # inverse of R @ (x - campos)
    w = np.concatenate([world(right), world(left)])
    ann = tmp_path / "annotations" / "test"
    ann.mkdir(parents=True)
    (ann / "InterHand2.6M_test_data.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "Capture0/ROM/cam400262/image0001.jpg", "width": 32, "height": 32,
                    "capture": 0, "camera": "400262", "frame_idx": 1},
                   {"id": 8, "file_name": "Capture0/ROM/cam400262/image0002.jpg", "width": 32, "height": 32,
                    "capture": 0, "camera": "400262", "frame_idx": 2}],
        "annotations": [{"id": 70, "image_id": 7, "joint_valid": [[1]] * 42, "hand_type": "interacting"},
                        {"id": 80, "image_id": 8, "joint_valid": [[1]] * 21 + [[0]] + [[1]] * 20,
                         "hand_type": "interacting"}]}))
    (ann / "InterHand2.6M_test_camera.json").write_text(json.dumps({"0": {
        "campos": {"400262": campos.tolist()}, "camrot": {"400262": R.tolist()},
        "focal": {"400262": [K[0, 0], K[1, 1]]}, "princpt": {"400262": [K[0, 2], K[1, 2]]}}}))
    (ann / "InterHand2.6M_test_joint_3d.json").write_text(json.dumps({"0": {
        "1": {"world_coord": w.tolist()}, "2": {"world_coord": w.tolist()}}}))
    assert detect_format(tmp_path) == "interhand"
    a, b = select(open_dataset(tmp_path))
    assert a.image == tmp_path / "images" / "test" / "Capture0/ROM/cam400262/image0001.jpg"
    assert np.allclose(a.K, K)
    assert [h.side for h in a.hands] == ["right", "left"]
    assert np.allclose(a.hands[0].keypoints_3d, right) and np.allclose(a.hands[1].keypoints_3d, left)
    assert [h.side for h in b.hands] == ["right"]                     # the left hand has an invalid joint


def test_rhd(tmp_path):
    left, right = _hand(6), _hand(7)
    xyz = np.concatenate([_to_source(left, FROM_RHD), _to_source(right, FROM_RHD)])
    uv = project_points(xyz, K)
    vis = np.ones(42)
    vis[21:21 + 15] = 0                                               # right hand: 6 of 21 visible
    anno = {0: {"xyz": xyz.astype(np.float32), "uv_vis": np.concatenate([uv, vis[:, None]], 1), "K": K},
            3: {"xyz": xyz, "uv_vis": np.concatenate([uv, np.zeros((42, 1))], 1), "K": K}}  # nothing visible
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / "anno_evaluation.pickle").write_bytes(pickle.dumps(anno, protocol=2))
    _image(folder / "color" / "00000.png")
    assert detect_format(tmp_path) == "rhd"
    (r,) = select(open_dataset(tmp_path))
    assert r.name == "evaluation/00000.png" and r.image.is_file()
    assert [h.side for h in r.hands] == ["left"]
    assert np.allclose(r.hands[0].keypoints_3d, left, atol=1e-6)
    assert np.allclose(r.hands[0].keypoints_2d, project_points(left, K))
    assert len(select(open_dataset(folder, format="rhd"))) == 1       # the split folder itself


def test_select_and_errors(tmp_path):
    for i in range(5):
        _image(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.png.gt.json").write_text(json.dumps({"hands": [{"side": "right",
                                                                         "keypoints_2d": [[i, i]] * 21}]}))
    assert [r.name for r in select(open_dataset(tmp_path), limit=2, every=2)] == ["0.png", "2.png"]
    (tmp_path / "0.png.gt.json").write_text("{not json")
    with pytest.raises(DatasetError, match="JSON"):
        select(open_dataset(tmp_path))
    with pytest.raises(DatasetError, match="no known dataset layout"):
        detect_format(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)
