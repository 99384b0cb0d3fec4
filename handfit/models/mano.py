"""MANO (Romero et al. 2017) through ``smplx.MANO`` as a :class:`HandModel`.

handfit ships no MANO files (their licence forbids it): ``--mano PATH`` points
at the user's own ``MANO_RIGHT``/``MANO_LEFT`` as ``.pkl`` (read with
:mod:`handfit.models.safe_pickle`, no chumpy needed) or ``.npz``.

* pose: smplx ``hand_pose`` (45 = 15 joints x axis-angle in MANO's own axes),
  ``flat_hand_mean=True`` so zero pose is the flat hand; no PCA.
* shape: the 10 MANO ``betas``.
* keypoints: MANO's 16 joints plus the fingertip vertices 744 (thumb), 320
  (index), 443 (middle), 554 (ring) and 671 (pinky), in MediaPipe order.
* UVs: MANO has none; an atlas is made once with xatlas and cached in
  ``cache_dir()`` under a hash of the template and faces.
* left hands: ``MANO_LEFT`` when it is there (``mirror=False``), else the
  mirrored right model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from ..cache import atomic_save, cache_dir
from ..errors import ModelError, UsageError
from .base import HandModel, ModelOutput

NUM_BETAS = 10
TIP_VERTICES = {"thumb": 744, "index": 320, "middle": 443, "ring": 554, "pinky": 671}
# MANO joint order: wrist, index1-3, middle1-3, pinky1-3, ring1-3, thumb1-3.
JOINT_NAMES = ("wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3",
               "pinky1", "pinky2", "pinky3", "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3")
# MediaPipe keypoint k <- MANO joint (int) or fingertip vertex ("tip", vertex id).
KEYPOINT_SOURCES = (
    0,
    13, 14, 15, ("tip", 744),
    1, 2, 3, ("tip", 320),
    4, 5, 6, ("tip", 443),
    10, 11, 12, ("tip", 554),
    7, 8, 9, ("tip", 671),
)
_REQUIRED = ("v_template", "f", "J_regressor", "weights", "kintree_table", "shapedirs", "posedirs")
_OPTIONAL = ("hands_components", "hands_mean")
_SEARCH_SUBDIRS = ("", "mano", "models", "mano/models")


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------
def _side_of(path: Path) -> str | None:
    stem = path.stem.upper()
    return "left" if "LEFT" in stem else "right" if "RIGHT" in stem else None


def find_mano_files(path) -> dict:
    """``{'right': Path, 'left': Path}`` (either may be missing) for a file or a folder.

    A file is used for its own side (from ``RIGHT``/``LEFT`` in its name, right
    if neither); its sibling for the other side is picked up when present. A
    folder is searched, then its ``mano/``, ``models/`` and ``mano/models/``
    subfolders, for ``MANO_RIGHT``/``MANO_LEFT`` as ``.npz`` (preferred) or ``.pkl``.
    """
    if path is None:
        raise UsageError("the MANO model needs --mano PATH: a MANO_RIGHT.pkl/.npz file or the folder "
                         "holding MANO_RIGHT/MANO_LEFT (download them from https://mano.is.tue.mpg.de)")
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"--mano {path}: no such file or folder")
    found: dict = {}
    if path.is_file():
        if path.suffix.lower() not in (".pkl", ".npz"):
            raise UsageError(f"--mano {path}: expected a .pkl or .npz MANO file")
        side = _side_of(path) or "right"
        found[side] = path
        folders = [path.parent]
    else:
        folders = [path / sub if sub else path for sub in _SEARCH_SUBDIRS]
    for side, stem in (("right", "MANO_RIGHT"), ("left", "MANO_LEFT")):
        if side in found:
            continue
        for folder in folders:
            hit = next((folder / f"{stem}{ext}" for ext in (".npz", ".pkl") if (folder / f"{stem}{ext}").is_file()), None)
            if hit is not None:
                found[side] = hit
                break
    if not found:
        where = ", ".join(str(f) for f in folders)
        raise ModelError(f"no MANO_RIGHT or MANO_LEFT .pkl/.npz found in {where}")
    return found


def read_mano_arrays(path) -> dict:
    """A MANO file (``.pkl`` or ``.npz``) as a dict of numpy arrays, checked for shape."""
    path = Path(path)
    if path.suffix.lower() == ".pkl":
        from .safe_pickle import load_mano_pickle

        raw = load_mano_pickle(path)
    elif path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = {}
                for key in _REQUIRED + _OPTIONAL:
                    if key in z.files:
                        raw[key] = z[key]
        except ValueError as e:   # object arrays (e.g. a pickled sparse J_regressor)
            raise ModelError(f"{path}: holds pickled objects, which handfit does not load from .npz "
                             f"({e}); save J_regressor as a dense array") from e
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"{path} is not a readable .npz file ({e})") from e
    else:
        raise ModelError(f"{path}: unknown MANO file type (expected .pkl or .npz)")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ModelError(f"{path}: not a MANO file, missing {', '.join(missing)}")
    out = {k: np.asarray(raw[k]) for k in _REQUIRED + _OPTIONAL if k in raw}
    try:
        V = out["v_template"].shape[0]
        ok = (out["v_template"].shape == (V, 3) and out["f"].ndim == 2 and out["f"].shape[1] == 3
              and out["J_regressor"].shape == (16, V) and out["weights"].shape == (V, 16)
              and out["kintree_table"].shape == (2, 16) and out["shapedirs"].shape[:2] == (V, 3)
              and out["shapedirs"].shape[2] >= NUM_BETAS and out["posedirs"].shape == (V, 3, 135)
              and 0 <= out["f"].min() and out["f"].max() < V and V > max(TIP_VERTICES.values()))
    except (IndexError, ValueError, TypeError):
        ok = False
    if not ok:
        shapes = {k: tuple(v.shape) for k, v in out.items()}
        raise ModelError(f"{path}: unexpected MANO array shapes {shapes}")
    for k in ("v_template", "J_regressor", "weights", "shapedirs", "posedirs"):
        out[k] = out[k].astype(np.float32)
    out["f"] = out["f"].astype(np.int64)
    out["kintree_table"] = out["kintree_table"].astype(np.int64)
    out.setdefault("hands_components", np.zeros((45, 45), np.float32))
    out.setdefault("hands_mean", np.zeros(45, np.float32))
    return out


# ---------------------------------------------------------------------------
# UV atlas
# ---------------------------------------------------------------------------
def mano_uv_atlas(v_template: np.ndarray, faces: np.ndarray):
    """(uv (T,2) float32 in [0,1] with v down the image, uv_faces (F,3) int64), cached.

    Made with xatlas once per distinct template/faces. Charts are oriented so a
    texture image is not mirrored: faces wound counter-clockwise seen from
    outside stay counter-clockwise on the image (row 0 at the top).
    """
    h = hashlib.sha1()
    h.update(np.round(np.asarray(v_template, np.float64), 6).astype("<f8").tobytes())
    h.update(np.asarray(faces).astype("<i8").tobytes())
    path = cache_dir() / f"mano_uv_{h.hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["uv_coords"].astype(np.float32), z["uv_faces"].astype(np.int64)
        except Exception:  # noqa: BLE001 - rebuild a damaged cache entry
            pass
    try:
        import xatlas
    except ImportError as e:
        raise ModelError(f"making MANO's UV atlas needs the 'xatlas' package ({e})") from e
    _, indices, uvs = xatlas.parametrize(np.asarray(v_template, np.float32), np.asarray(faces, np.uint32))
    uv = np.asarray(uvs, np.float64)
    uv_faces = np.asarray(indices, np.int64)
    t = uv[uv_faces]
    area = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 1, 1] - t[:, 0, 1]) * (t[:, 2, 0] - t[:, 0, 0])
    if (area > 0).sum() > (area < 0).sum():
        uv[:, 1] = 1 - uv[:, 1]   # v up -> v down the image rows
    uv = uv.astype(np.float32)
    atomic_save({"uv_coords": uv, "uv_faces": uv_faces}, path, _save_npz)
    return uv, uv_faces


def _save_npz(obj: dict, tmp) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, **obj)


# ---------------------------------------------------------------------------
# pose limits
# ---------------------------------------------------------------------------
# Anatomical boxes (flexion, twist, abduction), radians, relative to the flat hand.
_FINGER_BOX = {0: ((-0.5, 1.6), (-0.15, 0.15), (-0.35, 0.35)),   # MCP
               1: ((-0.1, 1.9), (-0.05, 0.05), (-0.05, 0.05)),   # PIP
               2: ((-0.2, 1.5), (-0.05, 0.05), (-0.05, 0.05))}   # DIP
_THUMB_BOX = {0: ((-0.6, 0.9), (-0.4, 0.4), (-0.6, 0.6)),       # CMC
              1: ((-0.3, 1.0), (-0.3, 0.3), (-0.25, 0.25)),     # MCP
              2: ((-0.4, 1.4), (-0.1, 0.1), (-0.1, 0.1))}       # IP
_CHAINS = {"index": (1, 2, 3), "middle": (4, 5, 6), "pinky": (7, 8, 9), "ring": (10, 11, 12), "thumb": (13, 14, 15)}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def mano_pose_limits(joints: np.ndarray, tips: dict, left: bool):
    """Approximate per-joint boxes (45,) in MANO's axes from the rest skeleton.

    For each joint, an anatomical frame (flexion axis, bone axis, palm-side
    axis) is built from the rest joints and the palm normal; the anatomical box
    is mapped into MANO's axes and enlarged to the axis-aligned box that holds
    it (|F| h), so the limits are somewhat looser than the anatomical ones.
    joints (16,3), tips {'thumb': (3,), ...}: rest positions.
    """
    n = _unit(np.cross(joints[1] - joints[0], joints[7] - joints[0]))   # out of a right palm
    if left:
        n = -n
    lower = np.zeros(45)
    upper = np.zeros(45)
    for finger, chain in _CHAINS.items():
        ends = [joints[chain[1]], joints[chain[2]], tips[finger]]
        for k, j in enumerate(chain):
            d = _unit(ends[k] - joints[j])
            side = n
            if finger == "thumb":   # the thumb curls across the palm, towards the middle finger
                side = _unit(n + _unit(joints[4] - joints[j]))
            f = _unit(np.cross(d, side))
            a = np.cross(f, d)
            F = np.stack([f, d, a], 1)                         # columns: flexion, twist, abduction
            box = np.array((_THUMB_BOX if finger == "thumb" else _FINGER_BOX)[k])   # (3,2)
            c, h = box.mean(1), (box[:, 1] - box[:, 0]) / 2
            centre, half = F @ c, np.abs(F) @ h
            lower[3 * (j - 1):3 * j] = centre - half
            upper[3 * (j - 1):3 * j] = centre + half
    return lower.astype(np.float32), upper.astype(np.float32)


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------
class ManoHand(HandModel):
    """MANO via smplx: pose_dim 45 (smplx ``hand_pose``), shape_dim 10 (``betas``)."""

    name = "mano"

    def __init__(self, arrays: dict, side: str = "right", mirror: bool = False, source: str = ""):
        super().__init__()
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', not {side!r}")
        import smplx
        from smplx.utils import Struct

        self.side = side
        self.mirror = bool(mirror)
        self.native_left = side == "left" and not self.mirror
        self.source = str(source)
        self.pose_dim = 45
        self.shape_dim = NUM_BETAS
        self.pose_names = list(JOINT_NAMES[1:])
        self.shape_names = [f"beta{i}" for i in range(NUM_BETAS)]
        with contextlib.redirect_stdout(io.StringIO()):   # smplx prints a warning about 10 betas
            self.layer = smplx.MANO(
                model_path=self.source or "MANO", data_struct=Struct(**arrays), is_rhand=not self.native_left,
                use_pca=False, flat_hand_mean=True, num_betas=NUM_BETAS, batch_size=1,
                create_global_orient=False, create_hand_pose=False, create_betas=False, create_transl=False)
        v = np.asarray(arrays["v_template"], np.float64)
        faces = np.asarray(arrays["f"], np.int64)
        # keep MANO's faces counter-clockwise seen from outside (positive signed volume)
        tri = v[faces]
        if np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() < 0:
            faces = faces[:, [0, 2, 1]]
        uv, uv_faces = mano_uv_atlas(v, faces)
        if self.mirror:
            faces, uv_faces = faces[:, [0, 2, 1]], uv_faces[:, [0, 2, 1]]
        self.register_buffer("faces", torch.as_tensor(np.ascontiguousarray(faces)))
        self.register_buffer("uv_faces", torch.as_tensor(np.ascontiguousarray(uv_faces)))
        self.register_buffer("uv_coords", torch.as_tensor(uv))
        joints = np.asarray(arrays["J_regressor"], np.float64) @ v
        lo, hi = mano_pose_limits(joints, {k: v[i] for k, i in TIP_VERTICES.items()}, left=self.native_left)
        self.register_buffer("pose_lower", torch.as_tensor(lo))
        self.register_buffer("pose_upper", torch.as_tensor(hi))
        self._kp_joint = [s for s in KEYPOINT_SOURCES if isinstance(s, int)]

    def extra_repr(self) -> str:
        return f"side={self.side}, mirror={self.mirror}, source={self.source!r}"

    def _forward_right(self, pose: torch.Tensor, shape: torch.Tensor) -> ModelOutput:
        B = pose.shape[0]
        out = self.layer(betas=shape, global_orient=pose.new_zeros(B, 3), hand_pose=pose)
        v, j = out.vertices, out.joints[:, :16]                 # (B,778,3), (B,16,3)
        cols = [v[:, s[1]] if isinstance(s, tuple) else j[:, s] for s in KEYPOINT_SOURCES]
        return ModelOutput(vertices=v, keypoints=torch.stack(cols, 1))

    def root_joint(self, shape: torch.Tensor) -> torch.Tensor:
        """MANO's joint 0 (the wrist keypoint) for shape (B,10) -> (B,3), rest pose, model frame."""
        L = self.layer
        v = L.v_template[None] + torch.einsum("bs,vcs->bvc", shape, L.shapedirs)   # (B,V,3)
        return torch.einsum("v,bvc->bc", L.J_regressor[0], v)

    @torch.no_grad()
    def mano_params_for_npz(self, global_orient, pose, shape, transl) -> dict:
        """Parameters named and defined as smplx's MANO expects them.

        handfit rotates about the wrist keypoint and then moves it to ``transl``;
        smplx rotates about the same joint but adds ``transl`` to its rest
        position, so smplx's ``transl = transl - J0(betas)``. Feeding the result
        to ``smplx.MANO(..., use_pca=False, flat_hand_mean=True)`` of the same
        file reproduces :meth:`forward`'s vertices. For a left hand mirrored
        from MANO_RIGHT (``mirrored`` True) they describe the right hand, which
        must then be mirrored in x.
        """
        def np32(t):
            return t.detach().to("cpu", torch.float32).numpy()

        smplx_transl = transl - self.root_joint(shape.to(self.layer.shapedirs.dtype)).to(transl.dtype)
        return {
            "global_orient": np32(global_orient),
            "hand_pose": np32(pose),
            "betas": np32(shape),
            "transl": np32(smplx_transl),
            "is_rhand": np.asarray(not self.native_left),
            "mirrored": np.asarray(self.mirror),
        }


    def export_params(self, params: dict) -> dict:
        """ONE hand's parameters for NPZ/JSON export, named as smplx's MANO wants them.

        params: dict of (1,·) tensors (global_orient, pose, shape, transl) ->
        1-D float32 arrays ``global_orient`` (3), ``hand_pose`` (45), ``betas`` (10),
        ``transl`` (3, smplx convention, see :meth:`mano_params_for_npz`), plus
        ``is_rhand``, ``mirrored``, ``side`` and ``model``.
        """
        d = self.mano_params_for_npz(**{k: params[k] for k in ("global_orient", "pose", "shape", "transl")})
        out = {k: d[k].reshape(-1) for k in ("global_orient", "hand_pose", "betas", "transl")}
        out.update(is_rhand=bool(d["is_rhand"]), mirrored=bool(d["mirrored"]), side=self.side, model=self.name)
        return out


def _fix_left_shapedirs(left: dict, right: dict) -> None:
    """The public MANO_LEFT ships shapedirs whose x rows equal MANO_RIGHT's instead of
    their mirror image; flip them, as the MANO community does."""
    if left["shapedirs"].shape == right["shapedirs"].shape and \
            np.abs(left["shapedirs"][:, 0] - right["shapedirs"][:, 0]).sum() < 1:
        left["shapedirs"] = left["shapedirs"].copy()
        left["shapedirs"][:, 0] *= -1


def load_mano(path, side: str = "right") -> ManoHand:
    """A :class:`ManoHand` for ``side`` from a ``--mano`` file or folder."""
    files = find_mano_files(path)
    if side == "left" and "left" in files:
        arrays = read_mano_arrays(files["left"])
        if "right" in files:
            _fix_left_shapedirs(arrays, read_mano_arrays(files["right"]))
        return ManoHand(arrays, side="left", mirror=False, source=str(files["left"]))
    if "right" not in files:
        raise ModelError(f"--mano {path}: found only {files['left'].name}; the right hand needs MANO_RIGHT")
    return ManoHand(read_mano_arrays(files["right"]), side=side, mirror=side == "left", source=str(files["right"]))
