"""One animated, textured, skinned glTF (.glb) per video track.

A track has one shape, so its hand is one rest mesh with a skeleton; every
fitted frame becomes one keyframe: each joint's local rotation and the root
joint's translation, at that frame's time in the video. glTF skinning then
gives back the model's own linear-blend-skinned vertices (see docs/batch.md
"Animated glTF per track" for what it cannot carry and how much that costs).

Frames, as in the per-frame GLBs (:func:`handfit.io.export.write_glb`): the
camera frame (OpenCV) turned 180° about x, ``C = diag(1,-1,-1)``, metres.

The rig, for one hand (``_s`` = the side's own frame: the model's right-hand
frame, mirrored in x for a left hand made by mirroring). The model poses a
rest point x by bone j's rigid transform ``A_j = A_parent o (x -> L_j (x-h_j) + h_j)``
(rest heads h_j, local rotations L_j in model axes) and blends them with the
skinning weights; then ``v_cam = R (v - root) + t`` (global_orient R, transl t,
root: the wrist keypoint). A mirror is a reflection, so a left hand's bones are
the mirrored right ones: heads M h_j and rotations M L_j M (M = diag(-1,1,1)),
which are rotations again. In glTF, joint j's node holds rest translation
``h_j - h_parent`` and rotation L_j; the root joint's node holds
``C R L_0`` and ``C t + C R (h_0 - root)``; the mesh is bound at the rest hand
``C (x - root_rest)``, where joint j sits at rest as ``[C | C (h_j - root_rest)]``;
its inverse bind matrix is the inverse, ``[C | -(h_j - root_rest)]``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GLTF_FRAME = np.diag([1.0, -1.0, -1.0])   # camera (OpenCV) -> glTF, a rotation (180° about x)
MIRROR = np.diag([-1.0, 1.0, 1.0])
MAX_INFLUENCES = 4                          # glTF's JOINTS_0/WEIGHTS_0; every viewer reads that set
SKIN_RGB = (0.80, 0.62, 0.52)               # the material's colour when a track has no texture

# glTF constants
_FLOAT, _USHORT, _UINT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963


@dataclass
class Rig:
    """A hand's skeleton and skin at one shape, in the side's own frame (metres).

    vertices (V,3) rest mesh, heads (J,3) rest joint heads, parents J ints
    (parents[0] = -1), weights (V,J) rows summing to 1, names J strings,
    root (3,) the wrist keypoint at rest (the point global_orient turns about).
    """
    vertices: np.ndarray
    heads: np.ndarray
    parents: list
    weights: np.ndarray
    names: list
    root: np.ndarray


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def _t(model, x) -> torch.Tensor:
    """x as a (T,·) tensor of the model's dtype and device."""
    ref = model.uv_coords
    return torch.as_tensor(np.asarray(x, np.float64)).to(ref.device, ref.dtype).reshape(len(x), -1)


def _mano_rest(model, shape: torch.Tensor):
    """MANO's shaped rest mesh (B,V,3) and joints (B,16,3), before pose correctives."""
    L = model.layer
    v = L.v_template[None].to(shape.dtype) + torch.einsum("bs,vcs->bvc", shape, L.shapedirs.to(shape.dtype))
    return v, torch.einsum("jv,bvc->bjc", L.J_regressor.to(shape.dtype), v)


@torch.no_grad()
def model_rig(model, shape) -> Rig:
    """The :class:`Rig` of ``model`` (Anny or MANO) at ``shape`` (S,) or (1,S)."""
    s = _t(model, np.asarray(_np(shape)).reshape(1, -1))
    zero = torch.zeros(1, model.pose_dim, dtype=s.dtype, device=s.device)
    root = _np(model._forward_right(zero, s).keypoints[0, 0])
    if model.name == "anny":
        verts, heads, _ = model.rest(s)
        weights, parents, names = model.weights, list(model.parents), list(model.bones)
    elif model.name == "mano":
        from ..models.mano import JOINT_NAMES

        verts, heads = _mano_rest(model, s)
        weights, parents, names = model.layer.lbs_weights, [int(p) for p in model.layer.parents], list(JOINT_NAMES)
        parents[0] = -1
    else:
        raise ValueError(f"no glTF rig for the {model.name!r} model")
    v, h = _np(verts[0]), _np(heads[0])
    if model.mirror:
        v, h, root = v @ MIRROR, h @ MIRROR, root @ MIRROR
    return Rig(v, h, parents, _np(weights), names, root)


@torch.no_grad()
def track_pose(model, params: dict, rig: Rig) -> tuple:
    """Per-frame joint rotations for glTF.

    params: handfit-named (T,·) arrays (global_orient, pose, shape, transl; the shape of frame 0 is used)
    -> (local (T,J,3,3) each joint node's rotation (the root's includes C R), root_t (T,3) the root node's
    translation), in the glTF frame."""
    from ..geometry import axis_angle_to_matrix

    L = local_rotations(model, params["pose"], params["shape"][0])
    R = _np(axis_angle_to_matrix(torch.as_tensor(_np(params["global_orient"]).reshape(-1, 3))))   # (T,3,3)
    t = _np(params["transl"]).reshape(-1, 3)
    CR = GLTF_FRAME @ R
    L[:, 0] = CR @ L[:, 0]
    root_t = t @ GLTF_FRAME.T + np.einsum("tij,j->ti", CR, rig.heads[0] - rig.root)
    return L, root_t


@torch.no_grad()
def local_rotations(model, pose, shape) -> np.ndarray:
    """Each bone's rotation about its own head, in the side's model axes.

    pose: (T,P), shape: (S,) (Anny's bone axes depend on it) -> (T,J,3,3); the root's is the
    identity (global_orient is applied on top)."""
    from ..geometry import axis_angle_to_matrix
    from ..models import lbs

    p = _t(model, _np(pose))
    if model.name == "anny":
        frames = model.rest(_t(model, _np(shape).reshape(1, -1)))[2].expand(len(p), -1, -1, -1)
        L = lbs.conjugate_rotations(frames, model.pose_rotmats(p))
    else:   # MANO: smplx rotates each joint in the model's axes
        L = axis_angle_to_matrix(torch.cat([p.new_zeros(len(p), 1, 3), p.reshape(len(p), -1, 3)], 1))
    L = _np(L)
    return MIRROR @ L @ MIRROR if model.mirror else L


def top_weights(weights: np.ndarray, k: int = MAX_INFLUENCES) -> tuple:
    """The k largest weights per vertex, renormalised.

    weights (V,J) -> joints (V,k) uint16, weights (V,k) float32 rows summing to 1."""
    idx = np.argsort(-weights, axis=1, kind="stable")[:, :k]   # both models have J >= 16 > k
    w = np.take_along_axis(weights, idx, 1)
    w = w / w.sum(1, keepdims=True)
    w[w < 1e-7] = 0.0
    idx[w == 0] = 0                      # unused slots: joint 0 with weight 0, as the spec asks
    return idx.astype(np.uint16), (w / w.sum(1, keepdims=True)).astype(np.float32)


def to_handfit_params(model, params: dict) -> dict:
    """A track's per-frame parameters as :meth:`HandModel.export_params` names them
    (tracks.npz, result.json; (T,·) arrays) -> handfit's own (global_orient, pose, shape, transl).
    MANO's are smplx-named with smplx's translation (see :meth:`ManoHand.mano_params_for_npz`)."""
    if "pose" in params and "shape" in params:
        return {k: _np(params[k]) for k in ("global_orient", "pose", "shape", "transl")}
    betas = _np(params["betas"])
    with torch.no_grad():
        j0 = _np(model.root_joint(_t(model, betas)))
    return {"global_orient": _np(params["global_orient"]), "pose": _np(params["hand_pose"]), "shape": betas,
            "transl": _np(params["transl"]) + j0}


# -- writing ---------------------------------------------------------------------------
class _Blob:
    """The GLB's one binary buffer, bufferViews and accessors as they are added."""

    def __init__(self, gltf):
        self.gltf, self.data = gltf, bytearray()

    def view(self, raw: bytes, target=None) -> int:
        import pygltflib as g

        self.data += b"\0" * (-len(self.data) % 4)
        self.gltf.bufferViews.append(g.BufferView(buffer=0, byteOffset=len(self.data), byteLength=len(raw),
                                                  target=target))
        self.data += raw
        return len(self.gltf.bufferViews) - 1

    def accessor(self, a: np.ndarray, kind: str, target=None, bounds: bool = False) -> int:
        import pygltflib as g

        ctype = {np.float32: _FLOAT, np.uint16: _USHORT, np.uint32: _UINT}[a.dtype.type]
        a = np.ascontiguousarray(a)
        flat = a.reshape(len(a), -1)
        acc = g.Accessor(bufferView=self.view(a.tobytes(), target), componentType=ctype, count=len(a), type=kind)
        if bounds:
            acc.min, acc.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1


def _quat(R: np.ndarray) -> np.ndarray:
    """(N,3,3) rotations -> (N,4) unit quaternions (x,y,z,w), sign-continuous along N
    (so interpolation between keyframes takes the short way)."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(R).as_quat()
    for i in range(1, len(q)):
        if q[i] @ q[i - 1] < 0:
            q[i] = -q[i]
    return q


def _normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V,3) of a counter-clockwise mesh."""
    n = np.zeros_like(v)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    for c in range(3):
        np.add.at(n, f[:, c], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _png(texture) -> bytes:
    from PIL import Image

    tex = texture.detach().cpu().numpy() if isinstance(texture, torch.Tensor) else np.asarray(texture)
    if tex.dtype != np.uint8:
        tex = (np.clip(tex, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(tex).save(buf, format="PNG")
    return buf.getvalue()


def write_track_glb(path, model, params: dict, times, texture=None, name: str = "hand",
                    influences: int = MAX_INFLUENCES) -> Path:
    """Write one track as an animated, skinned, textured binary glTF.

    model: the track's :class:`~handfit.models.HandModel` (its side), params: handfit-named
    (T,·) arrays (global_orient, pose, shape, transl; see :func:`to_handfit_params`), times:
    (T,) seconds of each keyframe, texture: (Ht,Wt,3) uint8 (or float in [0,1]) or None.
    influences: joints per vertex, 4 (JOINTS_0/WEIGHTS_0, which every glTF reader takes) or 8
    (adds JOINTS_1/WEIGHTS_1: exact for Anny, whose vertices have up to 6; Blender reads them,
    three.js does not).
    """
    import pygltflib as g

    from .export import split_uv_seams

    params = {k: _np(v) for k, v in params.items()}
    times = np.asarray(times, np.float64).reshape(-1)
    T = len(times)
    if T == 0 or any(len(params[k]) != T for k in ("global_orient", "pose", "shape", "transl")):
        raise ValueError(f"need one parameter row per keyframe ({T} times)")
    if T > 1 and not np.all(np.diff(times) > 0):
        raise ValueError("keyframe times must increase")
    rig = model_rig(model, params["shape"][0])
    L, root_t = track_pose(model, params, rig)
    C = GLTF_FRAME
    vi, ti, faces = split_uv_seams(model.faces.cpu().numpy(), model.uv_faces.cpu().numpy())
    bind = (rig.vertices - rig.root) @ C.T                                   # (V,3) the rest hand, glTF frame
    pos = bind[vi]
    uv = _np(model.uv_coords)[ti]
    uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1)
    if influences not in (4, 8):
        raise ValueError(f"influences must be 4 or 8, not {influences}")
    joints, weights = top_weights(rig.weights, influences)
    J = len(rig.parents)

    gltf = g.GLTF2(asset=g.Asset(generator="handfit", version="2.0"))
    blob = _Blob(gltf)
    attrs = g.Attributes(
        POSITION=blob.accessor(pos.astype(np.float32), "VEC3", _ARRAY_BUFFER, bounds=True),
        NORMAL=blob.accessor(_normals(bind, model.faces.cpu().numpy())[vi].astype(np.float32), "VEC3", _ARRAY_BUFFER),
        TEXCOORD_0=blob.accessor(uv.astype(np.float32), "VEC2", _ARRAY_BUFFER),
        JOINTS_0=blob.accessor(joints[vi, :4], "VEC4", _ARRAY_BUFFER),
        WEIGHTS_0=blob.accessor(weights[vi, :4], "VEC4", _ARRAY_BUFFER))
    if influences == 8:
        attrs.JOINTS_1 = blob.accessor(joints[vi, 4:], "VEC4", _ARRAY_BUFFER)
        attrs.WEIGHTS_1 = blob.accessor(weights[vi, 4:], "VEC4", _ARRAY_BUFFER)
    indices = blob.accessor(faces.reshape(-1).astype(np.uint32), "SCALAR", _ELEMENT_ARRAY_BUFFER)
    pbr = g.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=1.0)
    if texture is not None:
        gltf.images.append(g.Image(bufferView=blob.view(_png(texture)), mimeType="image/png", name=f"{name}_texture"))
        gltf.samplers.append(g.Sampler(magFilter=9729, minFilter=9987, wrapS=33071, wrapT=33071))
        gltf.textures.append(g.Texture(sampler=0, source=0))
        pbr.baseColorTexture = g.TextureInfo(index=0)
    else:
        pbr.baseColorFactor = [*SKIN_RGB, 1.0]
    gltf.materials.append(g.Material(name=f"{name}_skin", pbrMetallicRoughness=pbr))
    gltf.meshes.append(g.Mesh(name=name, primitives=[g.Primitive(attributes=attrs, indices=indices, material=0)]))

    # nodes: 0 the mesh, 1..J the joints (joint j is node j+1)
    gltf.nodes.append(g.Node(name=name, mesh=0, skin=0))
    for j, (n, p) in enumerate(zip(rig.names, rig.parents)):
        node = g.Node(name=n, children=[k + 1 for k, q in enumerate(rig.parents) if q == j])
        if p < 0:   # the rest: the hand as fitted at zero global_orient and transl, glTF frame
            node.rotation, node.translation = [1.0, 0.0, 0.0, 0.0], (C @ (rig.heads[j] - rig.root)).tolist()
        else:
            node.translation = (rig.heads[j] - rig.heads[p]).tolist()
        gltf.nodes.append(node)
    ibm = np.zeros((J, 4, 4))
    ibm[:, :3, :3] = C
    ibm[:, :3, 3] = -(rig.heads - rig.root)
    ibm[:, 3, 3] = 1.0
    gltf.skins.append(g.Skin(name=f"{name}_skin", skeleton=1, joints=list(range(1, J + 1)),
                             inverseBindMatrices=blob.accessor(ibm.transpose(0, 2, 1).astype(np.float32), "MAT4")))
    gltf.scenes.append(g.Scene(name=name, nodes=[0, 1]))
    gltf.scene = 0

    t_acc = blob.accessor(times.astype(np.float32), "SCALAR", bounds=True)
    anim = g.Animation(name=f"{name}_track")
    outs = [("rotation", j + 1, blob.accessor(_quat(L[:, j]).astype(np.float32), "VEC4")) for j in range(J)]
    outs.append(("translation", 1, blob.accessor(root_t.astype(np.float32), "VEC3")))
    for path_, node, acc in outs:
        anim.samplers.append(g.AnimationSampler(input=t_acc, output=acc, interpolation="LINEAR"))
        anim.channels.append(g.AnimationChannel(sampler=len(anim.samplers) - 1,
                                                target=g.AnimationChannelTarget(node=node, path=path_)))
    gltf.animations.append(anim)

    blob.data += b"\0" * (-len(blob.data) % 4)
    gltf.buffers.append(g.Buffer(byteLength=len(blob.data)))
    gltf.set_binary_blob(bytes(blob.data))
    path = Path(path)
    gltf.save_binary(str(path))
    return path


def track_times(frame_index, source_fps: float) -> np.ndarray:
    """Keyframe times (T,) in seconds: a frame's index over the source's frame rate, so
    frames that ``--every`` skipped keep their place in time."""
    return np.asarray(frame_index, np.float64) / float(source_fps)


def npz_track(npz, t: int) -> tuple:
    """Track t of a video's ``tracks.npz`` (a path or a loaded NpzFile).

    -> (side, params (export_params names, (T,·) arrays), times (T,) seconds)"""
    z = np.load(npz) if isinstance(npz, (str, Path)) else npz
    pre = f"track{t}_"
    names = ("global_orient", "pose", "shape", "transl", "hand_pose", "betas")
    params = {k: z[pre + k] for k in names if pre + k in z}
    return str(z[pre + "side"]), params, track_times(z[pre + "frames"], float(z["source_fps"]))


def write_video_track(path, model, params: dict, frame_index, source_fps: float, texture=None) -> Path:
    """A video track's .glb from what the video writes: params as :meth:`HandModel.export_params`
    names them ((T,·) arrays, tracks.npz's ``track<t>_*``), the fitted frames' indices (T,) and
    the source's frame rate."""
    return write_track_glb(path, model, to_handfit_params(model, params), track_times(frame_index, source_fps),
                           texture)
