"""Readers for hand datasets with 3D labels, each yielding :class:`~handfit.eval.records.Record`.

| format | layout read | hands |
|---|---|---|
| ``dev3d`` | ``<image>.gt.json`` beside each image (``../shared/data/dev3d/README.md``); 2D-only files work too | as labelled |
| ``freihand`` | ``<split>_K.json`` and ``<split>_xyz.json`` (lists, metres) beside ``<split>/rgb/%08d.jpg`` | right |
| ``ho3d`` | ``<split>/<sequence>/meta/<id>.pkl`` (``handJoints3D`` in OpenGL axes, ``camMat``) and ``rgb/<id>.png|jpg`` | right |
| ``interhand`` | ``annotations/<split>/InterHand2.6M_<split>_{data,camera,joint_3d}.json``, ``images/<split>/<file_name>`` | right, left |
| ``rhd`` | ``<split>/anno_<split>.pickle`` (``K``, ``xyz``, ``uv_vis``, 42 joints) and ``<split>/color/%05d.png`` | left, right |

Every reader converts to the record conventions: OpenCV camera frame, metres,
MediaPipe keypoint order. Pickles are read with handfit's restricted
unpickler (:func:`handfit.models.safe_pickle.load_data_pickle`), so a
dataset file cannot run code. Readers are generators: a 130k-image dataset is
not listed in memory, and :func:`select` takes the first ``limit`` records.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import ImageError
from ..io.walk import files_under, walk
from .records import FROM_INTERHAND, FROM_MANO_TIPS, FROM_RHD, MEDIAPIPE_NAMES, HandLabel, Record, reorder

__all__ = ["FORMATS", "DatasetError", "open_dataset", "detect_format", "select", "read_runs",
           "read_dev3d", "read_freihand", "read_ho3d", "read_interhand", "read_rhd"]

FORMATS = ("dev3d", "freihand", "ho3d", "interhand", "rhd")

# OpenGL camera axes (y up, z backwards, HO3D) -> OpenCV (y down, z forward).
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


class DatasetError(ImageError):
    """A dataset folder or annotation file is missing, malformed or not understood (exit code 4)."""


def _json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def _pickle(path: Path):
    from ..errors import ModelError
    from ..models.safe_pickle import load_data_pickle

    try:
        return load_data_pickle(path)
    except ModelError as e:
        raise DatasetError(str(e)) from None


def _hand(path, side, **arrays) -> HandLabel:
    try:
        return HandLabel(side, **arrays)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from None


def _record(path, image, K, hands, name) -> Record:
    try:
        return Record(image, K, hands, name)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from None


# ---------------------------------------------------------------- dev3d (handfit's own .gt.json)


def read_dev3d(root) -> Iterator[Record]:
    """``<image>.gt.json`` files under ``root`` (recursively, through linked folders too; or one
    such file).

    Each file has ``K`` (3x3, optional), ``keypoint_order`` (names; MediaPipe
    order when absent) and ``hands[]`` with ``side``, ``keypoints_3d_cam_mm``
    (21x3 mm, OpenCV camera frame; optional), ``keypoints_2d`` and ``visible``.
    """
    root = Path(root)
    files = [root] if root.is_file() else files_under(root, ".gt.json")
    base = root.parent if root.is_file() else root
    for gt in files:
        doc = _json(gt)
        image = gt.with_name(gt.name[: -len(".gt.json")])
        order = doc.get("keypoint_order")
        index = None
        if order is not None and list(order) != MEDIAPIPE_NAMES:
            try:
                index = [list(order).index(n) for n in MEDIAPIPE_NAMES]
            except ValueError:
                raise DatasetError(f"{gt}: keypoint_order {order} does not name the 21 keypoints "
                                   f"{MEDIAPIPE_NAMES}") from None
        hands = []
        for h in doc.get("hands", []):
            arrays = {}
            if h.get("keypoints_3d_cam_mm") is not None:
                arrays["keypoints_3d"] = np.asarray(h["keypoints_3d_cam_mm"], dtype=np.float64) / 1000.0
            if h.get("keypoints_2d") is not None:
                arrays["keypoints_2d"] = np.asarray(h["keypoints_2d"], dtype=np.float64)
            if h.get("visible") is not None:
                arrays["visible"] = np.asarray(h["visible"], dtype=bool)
            if index is not None:
                arrays = {k: np.asarray(v)[index] for k, v in arrays.items()}
            hands.append(_hand(gt, h.get("side"), **arrays))
        if hands:
            yield _record(gt, image, doc.get("K"), hands, str(image.relative_to(base)))


# ---------------------------------------------------------------- FreiHAND


def read_freihand(root, split: str | None = None, versions=(0,)) -> Iterator[Record]:
    """FreiHAND: ``<split>_K.json`` and ``<split>_xyz.json`` hold one entry per
    sample (3x3 K; 21x3 metres, camera frame, MediaPipe order); image
    ``<split>/rgb/%08d.jpg`` numbers sample ``i`` of background version ``v``
    as ``i + v * n_samples`` (the training set has 4 versions, the
    evaluation set 1). ``split``: ``evaluation`` when its labels are there,
    else ``training``. ``versions``: which versions, or ``"all"``. Right hands.
    """
    root = Path(root)
    if split is None:
        split = "evaluation" if (root / "evaluation_xyz.json").is_file() else "training"
    Ks, xyz = _json(root / f"{split}_K.json"), _json(root / f"{split}_xyz.json")
    if len(Ks) != len(xyz):
        raise DatasetError(f"{root}: {split}_K.json has {len(Ks)} entries but {split}_xyz.json {len(xyz)}")
    n = len(Ks)
    rgb = root / split / "rgb"
    if versions == "all":
        count = sum(1 for p in rgb.glob("*.jpg")) if rgb.is_dir() else 0
        versions = range(max(1, count // max(n, 1)))
    for i in range(n):
        for v in versions:
            image = rgb / f"{i + v * n:08d}.jpg"
            if not image.is_file():
                raise DatasetError(f"{image}: no such image (FreiHAND {split}, sample {i}, version {v})")
            hand = _hand(image, "right", keypoints_3d=np.asarray(xyz[i], dtype=np.float64))
            yield _record(root, image, Ks[i], [hand], f"{split}/{image.name}")


# ---------------------------------------------------------------- HO3D


def _ho3d_metas(root: Path, split: str | None) -> list:
    if (root / "meta").is_dir():                          # one sequence
        return sorted((root / "meta").glob("*.pkl"))
    split_dir = root / (split or "train")
    if split_dir.is_dir():
        return sorted(split_dir.glob("*/meta/*.pkl"))
    return sorted(root.glob("*/meta/*.pkl"))              # a split folder itself


def read_ho3d(root, split: str | None = None) -> Iterator[Record]:
    """HO3D (v2/v3): ``<split>/<seq>/meta/<id>.pkl`` with ``handJoints3D``
    (21x3 metres, **OpenGL** camera axes: y up, z towards the viewer; MANO's
    joint order with the five tips appended) and ``camMat`` (3x3); image
    ``<seq>/rgb/<id>.png`` (v2) or ``.jpg`` (v3). ``root`` may be the
    dataset, a split folder or one sequence; ``split`` defaults to ``train``.
    Frames without the 21 joints (the evaluation split keeps them hidden, it
    holds the wrist only) are skipped. Right hands.
    """
    root = Path(root)
    metas = _ho3d_metas(root, split)
    if not metas:
        raise DatasetError(f"{root}: no HO3D meta/*.pkl files (for split {split or 'train'!r})")
    found = False
    for meta in metas:
        d = _pickle(meta)
        if not isinstance(d, dict):
            raise DatasetError(f"{meta}: expected a dict, got {type(d).__name__}")
        joints, K = d.get("handJoints3D"), d.get("camMat")
        if joints is None or K is None or np.asarray(joints).shape != (21, 3):
            continue
        seq = meta.parent.parent
        image = next((seq / "rgb" / (meta.stem + ext) for ext in (".png", ".jpg")
                      if (seq / "rgb" / (meta.stem + ext)).is_file()), seq / "rgb" / (meta.stem + ".png"))
        kp = reorder(np.asarray(joints, dtype=np.float64) @ _GL_TO_CV.T, FROM_MANO_TIPS)
        found = True
        yield _record(meta, image, np.asarray(K, dtype=np.float64), [_hand(meta, "right", keypoints_3d=kp)],
                      f"{seq.name}/{image.name}")
    if not found:
        raise DatasetError(f"{root}: no HO3D frame has 21 labelled joints (the evaluation split's are hidden)")


# ---------------------------------------------------------------- InterHand2.6M


def _interhand_files(root: Path, split: str) -> tuple:
    name = f"InterHand2.6M_{split}_data.json"
    cands = sorted((p for p in files_under(root / "annotations", name) if p.name == name),
                   key=lambda p: (len(p.parts), str(p))) if (root / "annotations").is_dir() else []
    if not cands:
        raise DatasetError(f"{root}: no annotations/**/{name}")
    data = cands[0]
    return data, data.with_name(f"InterHand2.6M_{split}_camera.json"), data.with_name(f"InterHand2.6M_{split}_joint_3d.json")


def read_interhand(root, split: str | None = None) -> Iterator[Record]:
    """InterHand2.6M: the COCO-style ``..._data.json`` (images with capture,
    camera and frame ids; per image one annotation with ``joint_valid`` (42)
    and ``hand_type``), ``..._camera.json`` (per capture and camera:
    ``campos`` mm, ``camrot`` world->camera, ``focal`` [fx,fy], ``princpt``
    [cx,cy]) and ``..._joint_3d.json`` (per capture and frame: ``world_coord``
    42x3 mm; right hand 0-20, left 21-41, each tip-to-base per finger then
    the wrist). Camera coordinates are ``camrot @ (world - campos)``.
    A hand is kept when all its 21 joints are valid. ``split`` defaults to ``test``.
    """
    root = Path(root)
    split = split or "test"
    data_path, cam_path, joint_path = _interhand_files(root, split)
    data, cams, joints = _json(data_path), _json(cam_path), _json(joint_path)
    try:
        images = {im["id"]: im for im in data["images"]}
        anns = sorted(data["annotations"], key=lambda a: (a["image_id"], a.get("id", 0)))
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{data_path}: not an InterHand2.6M data file ({e!r} missing)") from None
    for ann in anns:
        try:
            im = images[ann["image_id"]]
            capture, cam, frame = str(im["capture"]), str(im["camera"]), str(im["frame_idx"])
            c = cams[capture]
            R = np.asarray(c["camrot"][cam], dtype=np.float64).reshape(3, 3)
            T = np.asarray(c["campos"][cam], dtype=np.float64).reshape(3)
            f = np.asarray(c["focal"][cam], dtype=np.float64).reshape(2)
            p = np.asarray(c["princpt"][cam], dtype=np.float64).reshape(2)
            j = joints[capture][frame]
            world = np.asarray(j["world_coord"], dtype=np.float64).reshape(42, 3)
            valid = np.asarray(ann.get("joint_valid", j.get("joint_valid")), dtype=np.float64).reshape(42) > 0
            hand_type = str(ann.get("hand_type", j.get("hand_type", "interacting")))
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{data_path}: annotation {ann.get('id')} is incomplete ({type(e).__name__}: {e})") \
                from None
        cam_xyz = (world - T) @ R.T / 1000.0
        K = np.array([[f[0], 0.0, p[0]], [0.0, f[1], p[1]], [0.0, 0.0, 1.0]])
        hands = []
        for side, part in (("right", slice(0, 21)), ("left", slice(21, 42))):
            if hand_type in (side, "interacting") and valid[part].all():
                hands.append(_hand(data_path, side, keypoints_3d=reorder(cam_xyz[part], FROM_INTERHAND)))
        if hands:
            image = root / "images" / split / im["file_name"]
            yield _record(data_path, image, K, hands, str(im["file_name"]))


# ---------------------------------------------------------------- RHD


def read_rhd(root, split: str | None = None, min_visible: int = 12) -> Iterator[Record]:
    """Rendered Handpose Dataset: ``<split>/anno_<split>.pickle`` maps each
    sample id to ``K`` (3x3), ``xyz`` (42x3 metres, camera frame) and
    ``uv_vis`` (42x3: pixels and a visibility flag); joints 0-20 are the left
    hand and 21-41 the right, each the wrist then every finger tip to base.
    Image ``<split>/color/%05d.png``. A hand is kept when at least
    ``min_visible`` of its keypoints are flagged visible. ``root`` may be
    the dataset or a split folder; ``split`` defaults to ``evaluation``.
    """
    root = Path(root)
    split = split or "evaluation"
    folder = root / split
    if not (folder / f"anno_{split}.pickle").is_file():
        pickles = sorted(root.glob("anno_*.pickle"))
        if not pickles:
            raise DatasetError(f"{root}: no {split}/anno_{split}.pickle")
        folder, split = root, pickles[0].stem[len("anno_"):]
    path = folder / f"anno_{split}.pickle"
    anno = _pickle(path)
    if not isinstance(anno, dict):
        raise DatasetError(f"{path}: expected a dict of samples, got {type(anno).__name__}")
    for sid in sorted(anno):
        a = anno[sid]
        try:
            K = np.asarray(a["K"], dtype=np.float64)
            xyz = np.asarray(a["xyz"], dtype=np.float64).reshape(42, 3)
            uvv = np.asarray(a["uv_vis"], dtype=np.float64).reshape(42, 3)
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{path}: sample {sid!r} is incomplete ({type(e).__name__}: {e})") from None
        hands = []
        for side, part in (("left", slice(0, 21)), ("right", slice(21, 42))):
            vis = uvv[part, 2] > 0.5
            if vis.sum() >= min_visible:
                hands.append(_hand(path, side, keypoints_3d=reorder(xyz[part], FROM_RHD),
                                   keypoints_2d=reorder(uvv[part, :2], FROM_RHD), visible=vis[FROM_RHD]))
        if hands:
            image = folder / "color" / f"{int(sid):05d}.png"
            yield _record(path, image, K, hands, f"{split}/{image.name}")


# ---------------------------------------------------------------- dispatch

_READERS = {"dev3d": read_dev3d, "freihand": read_freihand, "ho3d": read_ho3d, "interhand": read_interhand,
            "rhd": read_rhd}


def detect_format(root) -> str:
    """Guess a dataset folder's layout from the files it holds (one of :data:`FORMATS`)."""
    root = Path(root)
    if root.is_file():
        if root.name.endswith(".gt.json"):
            return "dev3d"
        raise DatasetError(f"{root}: not a dataset folder or a .gt.json file")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    if any(root.glob("*_xyz.json")) and any(root.glob("*_K.json")):
        return "freihand"
    if any(root.glob("anno_*.pickle")) or any(root.glob("*/anno_*.pickle")):
        return "rhd"
    if (root / "annotations").is_dir() and _any_file(root / "annotations", "InterHand2.6M_*_data.json"):
        return "interhand"
    if (root / "meta").is_dir() or any(itertools.islice(root.glob("*/meta/*.pkl"), 1)) \
            or any(itertools.islice(root.glob("*/*/meta/*.pkl"), 1)):
        return "ho3d"
    if _any_file(root, "*.gt.json"):
        return "dev3d"
    raise DatasetError(f"{root}: no known dataset layout ({', '.join(FORMATS)}); see handfit eval --help")


def _any_file(root: Path, pattern: str) -> bool:
    """Whether a file whose name matches ``pattern`` lies anywhere under ``root`` (links followed)."""
    return any(fnmatch.fnmatchcase(name, pattern) for _, _, files in walk(root) for name in files)


def open_dataset(root, format: str = "auto", split: str | None = None) -> Iterator[Record]:
    """Records of the dataset at ``root``; ``format`` one of :data:`FORMATS` or ``auto``."""
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in _READERS:
        raise DatasetError(f"unknown dataset format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    reader = _READERS[fmt]
    return reader(root) if fmt == "dev3d" else reader(root, split=split)


def select(records: Iterable[Record], limit: int | None = None, every: int = 1) -> list:
    """Every ``every``-th record, at most ``limit`` of them, as a list."""
    it = itertools.islice(records, 0, None, max(1, int(every)))
    return list(itertools.islice(it, limit) if limit is not None else it)


# ---------------------------------------------------------------- sequences (one folder per run)


def read_runs(root, every: int = 1) -> list:
    """The runs of a sequence dataset in the dev3d layout: every folder under ``root``
    that holds labelled images is one run (a clip of one hand), its frames in file-name
    order, each with its own K (``../shared/data/dev3d_seq/README.md``).

    every: keep every N-th frame of each run (its first frame included).
    -> [(run name, [Record, ...])], runs in name order; a run's name is its folder
    relative to ``root``. Raises :class:`DatasetError` when ``root`` is not a folder,
    holds no labelled image, has labelled images directly in it (not in run
    folders), or when a run folder has an image without its ``.gt.json``.
    """
    from ..io.media import PHOTO_EXTS

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: a sequence dataset is a folder with one subfolder per run")
    runs: dict = {}
    for rec in read_dev3d(root):
        runs.setdefault(rec.image.parent, []).append(rec)
    if not runs:
        raise DatasetError(f"{root}: no labelled image (<image>.gt.json) found")
    if root in runs:
        names = ", ".join(r.image.name for r in runs[root][:3])
        raise DatasetError(f"{root}: labelled images lie directly in the folder ({names}, ...); a sequence "
                           f"dataset holds one subfolder per run, the frames of a run inside it")
    out = []
    for folder in sorted(runs):
        unlabelled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PHOTO_EXTS
                            and not p.with_name(p.name + ".gt.json").is_file())
        if unlabelled:
            more = f" and {len(unlabelled) - 3} more" if len(unlabelled) > 3 else ""
            raise DatasetError(f"{folder}: frames without labels: {', '.join(unlabelled[:3])}{more} (each frame "
                               f"of a run needs its <image>.gt.json)")
        frames = sorted(runs[folder], key=lambda r: r.image.name)[:: max(1, int(every))]
        out.append((folder.relative_to(root).as_posix(), frames))
    return out
