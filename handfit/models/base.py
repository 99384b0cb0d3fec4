"""The one interface every hand model implements.

Everything above the model layer (fitting, texture, export) talks to a
:class:`HandModel` only, so Anny and MANO are interchangeable.

Conventions
-----------
* Units are metres. The model's own frame is right-handed; the fit places the
  hand in the OpenCV camera frame (x right, y down, z forward) through
  ``global_orient`` and ``transl``.
* ``global_orient`` is an axis-angle rotation ``(B,3)`` of the whole hand about
  the wrist keypoint; ``transl`` ``(B,3)`` then moves the wrist keypoint. With
  both zero the wrist keypoint is at the origin.
* ``pose`` ``(B,P)`` are the articulation parameters (axis-angle per joint,
  flattened), ``shape`` ``(B,S)`` the identity parameters. Zero pose is the
  model's rest pose and zero shape its mean shape.
* Keypoints are the 21 MediaPipe landmarks in MediaPipe order
  (:data:`KEYPOINT_NAMES`; it and :data:`SKELETON` come from
  :mod:`handfit.keypoints`).
* A left hand is the mirror image (x -> -x in the model frame) of the right
  model, with the face winding reversed so normals still point outwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..keypoints import KEYPOINT_NAMES, SKELETON  # noqa: F401  (re-exported: the one definition)


@dataclass
class ModelOutput:
    vertices: torch.Tensor   # (B,V,3) metres
    keypoints: torch.Tensor  # (B,21,3) metres, MediaPipe order


class HandModel(nn.Module):
    """Abstract hand model. Subclasses fill the buffers and implement ``_forward_right``.

    Attributes (set by subclasses)
    ------------------------------
    name : str                 "anny" or "mano"
    side : str                 "right" or "left"
    mirror : bool              mirror the right-hand output in x (left hands built from a right model)
    faces : LongTensor (F,3)   triangle vertex indices, counter-clockwise seen from outside
    uv_faces : LongTensor (F,3) indices into ``uv_coords`` per face corner
    uv_coords : Tensor (T,2)   UV coordinates in [0,1]^2, (0,0) = first texel row/column
                               of the texture image (nvdiffrast convention: v grows with
                               the image row). Exporters flip v for OBJ/GLB.
    pose_dim, shape_dim : int
    pose_names : list[str]     one name per joint (each takes 3 pose values)
    shape_names : list[str]    one name per shape value
    pose_lower, pose_upper : Tensor (P,)  anatomical limits of ``pose`` (radians)
    """

    name: str = "hand"
    side: str = "right"
    # True when a left hand is made by mirroring the right model (Anny, MANO
    # without MANO_LEFT). A model with a native left variant sets it False.
    mirror: bool = False
    pose_dim: int
    shape_dim: int
    pose_names: list
    shape_names: list

    # -- subclasses implement -------------------------------------------------
    def _forward_right(self, pose: torch.Tensor, shape: torch.Tensor) -> ModelOutput:
        """Articulated right hand in its own frame, wrist keypoint at the origin.

        pose: (B,P), shape: (B,S) -> vertices (B,V,3), keypoints (B,21,3)
        """
        raise NotImplementedError

    def _keypoints_right(self, pose: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """The keypoints of :meth:`_forward_right` alone, (B,21,3); a model whose keypoints do
        not need the skinned vertices overrides it to skip the skinning."""
        return self._forward_right(pose, shape).keypoints

    # -- shared -----------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return int(self.faces.max()) + 1

    @property
    def face_uvs(self) -> torch.Tensor:
        """(F,3,2) UV per face corner."""
        return self.uv_coords[self.uv_faces]

    def zero_params(self, batch_size: int = 1, device=None, dtype=torch.float32) -> dict:
        """Rest-pose, mean-shape parameters for ``batch_size`` hands."""
        z = lambda n: torch.zeros(batch_size, n, device=device, dtype=dtype)  # noqa: E731
        return {"global_orient": z(3), "pose": z(self.pose_dim), "shape": z(self.shape_dim), "transl": z(3)}

    def forward(self, global_orient: torch.Tensor, pose: torch.Tensor, shape: torch.Tensor,
                transl: torch.Tensor) -> ModelOutput:
        """Posed hand.

        global_orient: (B,3) axis-angle, pose: (B,P), shape: (B,S), transl: (B,3)
        -> ModelOutput(vertices (B,V,3), keypoints (B,21,3))
        """
        from ..geometry import axis_angle_to_matrix

        out = self._forward_right(pose, shape)
        root, R = out.keypoints[:, :1], axis_angle_to_matrix(global_orient)   # (B,1,3), (B,3,3)
        return ModelOutput(vertices=self._place(out.vertices, root, R, transl),
                           keypoints=self._place(out.keypoints, root, R, transl))

    def keypoints(self, global_orient: torch.Tensor, pose: torch.Tensor, shape: torch.Tensor,
                  transl: torch.Tensor) -> torch.Tensor:
        """The posed hand's keypoints (B,21,3) alone: :meth:`forward`'s, to the bit, without
        its vertices (the keypoint and temporal stages never look at them)."""
        from ..geometry import axis_angle_to_matrix

        k = self._keypoints_right(pose, shape)
        return self._place(k, k[:, :1], axis_angle_to_matrix(global_orient), transl)

    def _place(self, x: torch.Tensor, root: torch.Tensor, R: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """Points (B,N,3) of the right hand's posed rest frame in the camera frame: the wrist
        (root (B,1,3)) at the origin, mirrored for a left hand, turned by R (B,3,3), moved by
        transl (B,3)."""
        x = x - root
        if self.mirror:
            x = x * x.new_tensor([-1.0, 1.0, 1.0])
        return x @ R.transpose(1, 2) + transl[:, None, :]

    def export_params(self, params: dict) -> dict:
        """Parameters of ONE hand as float32 numpy arrays for NPZ/JSON export.

        params: dict of (1,·) tensors (global_orient, pose, shape, transl).
        Subclasses rename keys to their family's conventions (smplx for MANO).
        """
        out = {k: params[k].detach().reshape(-1).float().cpu().numpy() for k in ("global_orient", "pose", "shape", "transl")}
        out["side"] = self.side
        out["model"] = self.name
        return out
