"""A track's animated glTF (handfit.io.gltf_track), read back with pygltflib.

A synthetic 3-frame track straight from the model (no video): the file's structure,
and glTF skinning re-implemented in numpy on the file's own data against the model's
posed vertices at every keyframe, right and left hands (a left Anny hand is a mirror).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pygltflib = pytest.importorskip("pygltflib")

from handfit.io.export import split_uv_seams  # noqa: E402
from handfit.io.gltf_track import GLTF_FRAME, to_handfit_params, write_track_glb  # noqa: E402
from handfit.models import load_model  # noqa: E402

TIMES = np.array([0.0, 0.2, 0.48])   # frames 0, 5 and 12 of a 25 fps clip
_NP = {5126: np.float32, 5123: np.uint16, 5125: np.uint32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def read(gl, i) -> np.ndarray:
    """Accessor i as a (count, width) float64 array."""
    a = gl.accessors[i]
    bv = gl.bufferViews[a.bufferView]
    n = _WIDTH[a.type]
    raw = np.frombuffer(gl.binary_blob(), _NP[a.componentType], a.count * n, bv.byteOffset + (a.byteOffset or 0))
    return raw.reshape(a.count, n).astype(np.float64)


def quat_matrix(q) -> np.ndarray:
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def skin(gl, k: int) -> np.ndarray:
    """glTF skinning at keyframe k, from the file alone: node TRS (animated channels at
    keyframe k), world matrices down the hierarchy, joint matrix = world @ inverse bind,
    vertices blended by JOINTS_n/WEIGHTS_n. -> (V,3)"""
    trs = {i: [np.array(n.translation or [0.0, 0, 0]), np.array(n.rotation or [0.0, 0, 0, 1])]
           for i, n in enumerate(gl.nodes)}
    anim = gl.animations[0]
    for ch in anim.channels:
        trs[ch.target.node][0 if ch.target.path == "translation" else 1] = read(gl, anim.samplers[ch.sampler].output)[k]
    world = {}

    def walk(i, parent):
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = quat_matrix(trs[i][1]), trs[i][0]
        world[i] = parent @ M
        for c in gl.nodes[i].children or []:
            walk(c, world[i])

    for r in gl.scenes[gl.scene].nodes:
        walk(r, np.eye(4))
    sk = gl.skins[0]
    ibm = read(gl, sk.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)   # column-major
    joint_mats = np.stack([world[j] @ ibm[i] for i, j in enumerate(sk.joints)])
    at = gl.meshes[0].primitives[0].attributes
    J, W = read(gl, at.JOINTS_0).astype(int), read(gl, at.WEIGHTS_0)
    if getattr(at, "JOINTS_1", None) is not None:
        J = np.concatenate([J, read(gl, at.JOINTS_1).astype(int)], 1)
        W = np.concatenate([W, read(gl, at.WEIGHTS_1)], 1)
    M = np.einsum("vk,vkij->vij", W, joint_mats[J])
    P = read(gl, at.POSITION)
    return np.einsum("vij,vj->vi", M[:, :3, :3], P) + M[:, :3, 3]


def track_params(model, T=3, seed=1) -> dict:
    """T frames of varied poses within the model's limits, one shape."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(T, model.pose_dim, generator=g)
    return {"global_orient": torch.randn(T, 3, generator=g) * 0.8,
            "pose": model.pose_lower + (model.pose_upper - model.pose_lower) * u,
            "shape": torch.randn(1, model.shape_dim, generator=g).expand(T, -1).clone(),
            "transl": torch.randn(T, 3, generator=g) * 0.05 + torch.tensor([0.0, 0.0, 0.5])}


def skin_errors_mm(path, model, params) -> np.ndarray:
    """(T,V) distance of the file's skinned vertices from the model's posed ones (glTF frame), mm."""
    gl = pygltflib.GLTF2().load(str(path))
    vi, _, _ = split_uv_seams(model.faces, model.uv_faces)
    with torch.no_grad():
        ref = model(**params).vertices.double().numpy() @ GLTF_FRAME
    return np.stack([np.linalg.norm(skin(gl, k) - ref[k][vi], axis=1) * 1000 for k in range(len(ref))])


@pytest.fixture(scope="module", params=["right", "left"])
def anny_track(request, tmp_path_factory):
    model = load_model("anny", side=request.param)
    params = track_params(model)
    tex = np.zeros((64, 64, 3), np.uint8)
    tex[..., 0] = 200
    path = write_track_glb(tmp_path_factory.mktemp("glb") / f"track_{request.param}.glb", model, params, TIMES, tex)
    return model, params, path


def test_file_structure(anny_track):
    model, params, path = anny_track
    gl = pygltflib.GLTF2().load(str(path))
    assert len(gl.meshes) == 1 and len(gl.skins) == 1 and len(gl.animations) == 1
    (prim,) = gl.meshes[0].primitives
    at = prim.attributes
    vi, _, faces = split_uv_seams(model.faces, model.uv_faces)
    for name in ("POSITION", "NORMAL", "TEXCOORD_0", "JOINTS_0", "WEIGHTS_0"):
        assert gl.accessors[getattr(at, name)].count == len(vi), name
    assert gl.accessors[prim.indices].count == faces.size and read(gl, prim.indices).max() < len(vi)
    w = read(gl, at.WEIGHTS_0)
    assert np.allclose(w.sum(1), 1, atol=1e-6) and (w >= 0).all()
    skin_ = gl.skins[0]
    J = len(model.parents)
    assert len(skin_.joints) == J and gl.accessors[skin_.inverseBindMatrices].count == J
    assert read(gl, at.JOINTS_0).max() < J
    mesh_node = [n for n in gl.nodes if n.mesh is not None]
    assert len(mesh_node) == 1 and mesh_node[0].skin == 0
    # one keyframe per frame, at its time; every joint's rotation and the root's translation
    anim = gl.animations[0]
    targets = {(c.target.node, c.target.path) for c in anim.channels}
    assert targets == {(j, "rotation") for j in skin_.joints} | {(skin_.joints[0], "translation")}
    for s in anim.samplers:
        assert np.allclose(read(gl, s.input)[:, 0], TIMES, atol=1e-6)
        assert gl.accessors[s.output].count == len(TIMES)
    # the texture, embedded as a PNG and used by the mesh's material
    (img,) = gl.images
    assert img.mimeType == "image/png" and img.bufferView is not None and img.uri is None
    bv = gl.bufferViews[img.bufferView]
    assert gl.binary_blob()[bv.byteOffset:bv.byteOffset + 8] == b"\x89PNG\r\n\x1a\n"
    tex = gl.materials[prim.material].pbrMetallicRoughness.baseColorTexture
    assert gl.textures[tex.index].source == 0


def test_skinning_reproduces_the_model(anny_track):
    model, params, path = anny_track
    err = skin_errors_mm(path, model, params)
    # the only loss: weights cut to the 4 largest per vertex (Anny has up to 6) and renormalised
    assert err.mean(1).max() < 0.1 and err.max() < 5.0, (err.mean(1), err.max())


def test_eight_influences_are_exact(tmp_path):
    model = load_model("anny", side="left")
    params = track_params(model, seed=3)
    path = write_track_glb(tmp_path / "t.glb", model, params, TIMES, None, influences=8)
    assert skin_errors_mm(path, model, params).max() < 0.01
    gl = pygltflib.GLTF2().load(str(path))
    assert not gl.images and gl.materials[0].pbrMetallicRoughness.baseColorFactor[:3] != [1, 1, 1]


def test_mano_without_correctives_is_exact(tmp_path, monkeypatch):
    """MANO's skin is its LBS; its pose correctives are what the glTF drops (zeroed here)."""
    from test_mano import random_mano

    monkeypatch.setenv("HANDFIT_CACHE", str(tmp_path / "cache"))
    arrays = random_mano()
    arrays["posedirs"] = np.zeros_like(arrays["posedirs"])
    w = arrays["weights"] * (arrays["weights"] >= np.sort(arrays["weights"], 1)[:, -4:-3])   # 4 per vertex, as MANO's
    arrays["weights"] = w / w.sum(1, keepdims=True)
    np.savez(tmp_path / "MANO_RIGHT.npz", **arrays)
    for side in ("right", "left"):   # left: mirrored from MANO_RIGHT
        model = load_model("mano", side=side, mano_path=tmp_path / "MANO_RIGHT.npz")
        params = track_params(model, seed=4)
        path = write_track_glb(tmp_path / f"{side}.glb", model, params, TIMES, None)
        assert skin_errors_mm(path, model, params).max() < 0.01
        # the smplx-named parameters of result.json / tracks.npz come back to handfit's
        rows = [model.export_params({k: v[i:i + 1] for k, v in params.items()}) for i in range(len(TIMES))]
        stacked = {k: np.stack([r[k] for r in rows]) for k in ("global_orient", "hand_pose", "betas", "transl")}
        back = to_handfit_params(model, stacked)
        for k in ("global_orient", "pose", "shape", "transl"):
            assert np.allclose(back[k], params[k].numpy(), atol=1e-6), k


def test_export_track_api_from_tracks_npz(tmp_path):
    """handfit.export_track on a video's tracks.npz writes what the video would."""
    import handfit
    from handfit.io.gltf_track import npz_track

    model = load_model("anny", side="left")
    params = {k: v.numpy() for k, v in track_params(model, seed=5).items()}
    np.savez(tmp_path / "tracks.npz", source_fps=25.0, num_tracks=np.array(1), track0_side=np.array("left"),
             track0_frames=np.array([0, 5, 12]), **{f"track0_{k}": v for k, v in params.items()})
    side, _, times = npz_track(tmp_path / "tracks.npz", 0)
    assert side == "left" and np.allclose(times, TIMES)
    path = handfit.export_track(tmp_path / "t.glb", tmp_path / "tracks.npz", track=0)
    assert skin_errors_mm(path, model, {k: torch.as_tensor(v) for k, v in params.items()}).mean(1).max() < 0.1
