"""Plain batched linear blend skinning over tensors (pure functions, autograd-safe).

Notation: ``B`` batch, ``V`` vertices, ``J`` bones (joints), ``S`` shape values.
A bone ``j`` rotates about its rest head ``joints[:, j]``; its transform maps a
rest-space point to its posed position and is stored as a rotation ``(...,3,3)``
plus a translation ``(...,3)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch


def blend(template: torch.Tensor, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Linear blend shapes.

    template: (N,C), dirs: (S,N,C), coeffs: (B,S) -> (B,N,C) = template + sum_s coeffs[:,s] dirs[s]
    """
    return template[None] + torch.einsum("bs,snc->bnc", coeffs, dirs)


def conjugate_rotations(frames: torch.Tensor, rotmats: torch.Tensor) -> torch.Tensor:
    """Rotations given in each bone's frame, expressed in the model frame.

    frames: (B,J,3,3) columns = the bone's axes in model coordinates,
    rotmats: (B,J,3,3) rotations in the bone's own axes -> (B,J,3,3) = F R F^T
    """
    return frames @ rotmats @ frames.transpose(-1, -2)


@lru_cache(maxsize=16)
def _levels(parents: tuple) -> tuple:
    """Bones grouped by depth, root level first: per level (its bones, the position of
    each one's parent among the previous level's bones); then, for every bone, its
    position in the levels laid end to end."""
    depth = []
    for j, p in enumerate(parents):
        if p >= j:
            raise ValueError("parents must list every bone after its parent")
        depth.append(0 if p < 0 else depth[p] + 1)
    levels, order = [], []
    for d in range(max(depth) + 1):
        bones = tuple(j for j in range(len(parents)) if depth[j] == d)
        prev = levels[-1][0] if levels else ()
        levels.append((bones, tuple(prev.index(parents[j]) for j in bones) if d else ()))
        order += bones
    return tuple(levels), tuple(order.index(j) for j in range(len(parents)))


def rigid_chain(local_rots: torch.Tensor, joints: torch.Tensor, parents: Sequence[int]):
    """Forward kinematics.

    local_rots: (B,J,3,3) each bone's rotation about its own rest head, in model axes
                (the root's included),
    joints: (B,J,3) rest heads, parents: J ints with parents[j] < j and parents[0] = -1
    -> rot (B,J,3,3), transl (B,J,3): bone j maps a rest point x to rot[:,j] x + transl[:,j].

    Bone j's transform is its parent's composed with the rotation local_rots[:,j]
    about joints[:,j]: X_j = X_p o (x -> L_j (x - h_j) + h_j). Computed one depth
    level at a time, a batched product per level; whole levels are gathered and
    concatenated, not single bones, because on small hands per-op overhead, not
    arithmetic, is the cost (forward and backward alike).
    """
    levels, back = _levels(tuple(int(p) for p in parents))
    dev = local_rots.device
    t_local = joints - (local_rots @ joints[..., None])[..., 0]      # (B,J,3)
    rots, trans = [], []
    for bones, pars in levels:
        idx = torch.tensor(bones, device=dev)
        L, t = local_rots.index_select(1, idx), t_local.index_select(1, idx)   # (B,n,3,3), (B,n,3)
        if not pars:
            R, T = L, t
        else:
            up = torch.tensor(pars, device=dev)
            Rp, tp = rots[-1].index_select(1, up), trans[-1].index_select(1, up)
            R = Rp @ L
            T = (Rp @ t[..., None])[..., 0] + tp
        rots.append(R)
        trans.append(T)
    back = torch.tensor(back, device=dev)
    return torch.cat(rots, 1).index_select(1, back), torch.cat(trans, 1).index_select(1, back)


def transform_points(rot: torch.Tensor, transl: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply per-bone transforms to one point per bone.

    rot: (B,J,3,3), transl: (B,J,3), points: (B,J,3) -> (B,J,3)
    """
    return (rot @ points[..., None])[..., 0] + transl


def skin(vertices: torch.Tensor, weights: torch.Tensor, rot: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning.

    vertices: (B,V,3) rest vertices, weights: (V,J) rows summing to 1,
    rot: (B,J,3,3), transl: (B,J,3) -> (B,V,3) = sum_j w_vj (rot_j v + transl_j)
    """
    B, J = rot.shape[:2]
    T = torch.cat([rot, transl[..., None]], -1).reshape(B, J, 12)      # (B,J,12) = [R | t] rows
    M = (weights @ T).reshape(B, -1, 3, 4)                             # (B,V,3,4) blended transforms
    return (M[..., :3] @ vertices[..., None])[..., 0] + M[..., 3]


def lbs(rest_vertices: torch.Tensor, rest_joints: torch.Tensor, frames: torch.Tensor,
        pose_rotmats: torch.Tensor, weights: torch.Tensor, parents: Sequence[int]):
    """Pose a shaped rest mesh.

    rest_vertices: (B,V,3), rest_joints: (B,J,3) bone heads, frames: (B,J,3,3) rest bone axes,
    pose_rotmats: (B,J,3,3) each bone's rotation in its own axes (identity = rest),
    weights: (V,J), parents: J ints
    -> vertices (B,V,3), joints (B,J,3) posed bone heads
    """
    local = conjugate_rotations(frames, pose_rotmats)          # (B,J,3,3)
    rot, transl = rigid_chain(local, rest_joints, parents)     # (B,J,3,3), (B,J,3)
    verts = skin(rest_vertices, weights, rot, transl)          # (B,V,3)
    joints = transform_points(rot, transl, rest_joints)        # (B,J,3)
    return verts, joints
