"""MANO through smplx, MANO files (.npz and chumpy-style .pkl) and the restricted unpickler.

No real MANO files are needed: the tests write MANO-format files with random
values, including pickles that name chumpy and old-scipy classes exactly as the
official files do (chumpy itself is not installed).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import types

from pathlib import Path
import numpy as np
import pytest
import torch

from handfit.errors import ModelError, UsageError
from handfit.models import load_model
from handfit.models.mano import TIP_VERTICES, find_mano_files, read_mano_arrays
from handfit.models.safe_pickle import load_mano_pickle, loads_restricted

PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
FLIP = np.array([-1.0, 1.0, 1.0])


# -- a random MANO-format model --------------------------------------------------------
def random_mano(seed=0) -> dict:
    """A hand-sized open sheet (39 x 20 grid, 780 vertices) with random MANO arrays."""
    rng = np.random.default_rng(seed)
    nu, nv = 39, 20
    u, v = np.meshgrid(np.linspace(0, 0.18, nu), np.linspace(-0.05, 0.05, nv), indexing="ij")
    verts = np.stack([u, 0.01 * np.sin(8 * u) * np.cos(20 * v), v], -1).reshape(-1, 3)
    verts += rng.normal(0, 5e-4, verts.shape)
    idx = np.arange(nu * nv).reshape(nu, nv)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.uint32)
    V = verts.shape[0]
    jreg = np.zeros((16, V))
    for j in range(16):   # each joint: a few vertices
        cols = rng.choice(V, 4, replace=False)
        jreg[j, cols] = rng.random(4)
    jreg /= jreg.sum(1, keepdims=True)
    w = rng.random((V, 16)) ** 4
    w /= w.sum(1, keepdims=True)
    return {
        "v_template": verts,
        "f": faces,
        "J_regressor": jreg,
        "weights": w,
        "kintree_table": np.array([[4294967295] + PARENTS[1:], list(range(16))], dtype=np.int64),
        "shapedirs": rng.normal(0, 0.005, (V, 3, 10)),
        "posedirs": rng.normal(0, 0.001, (V, 3, 135)),
        "hands_components": rng.normal(0, 1, (45, 45)),
        "hands_mean": rng.normal(0, 0.1, 45),
    }


def mirror_mano(arrays: dict) -> dict:
    """The exact mirror image (x -> -x) of a MANO model, as a native left model."""
    out = dict(arrays)
    out["v_template"] = arrays["v_template"] * FLIP
    out["shapedirs"] = arrays["shapedirs"] * FLIP[None, :, None]
    # pose features are (R - I) per joint, row-major; mirrored: m_r m_s (R - I)_rs, vertex coord c: m_c
    m = np.outer(FLIP, FLIP).ravel()                                   # (9,)
    out["posedirs"] = arrays["posedirs"] * FLIP[None, :, None] * np.tile(m, 15)[None, None, :]
    out["f"] = arrays["f"][:, [0, 2, 1]]
    return out


@contextlib.contextmanager
def fake_modules(**classes):
    """Temporarily register classes under dotted names ('chumpy.ch.Ch' -> module chumpy.ch)."""
    saved = {}
    try:
        for dotted, cls in classes.items():
            modname, _, name = dotted.rpartition(".")
            parts = modname.split(".")
            for i in range(1, len(parts) + 1):
                mname = ".".join(parts[:i])
                if mname not in saved:
                    saved[mname] = sys.modules.get(mname)
                    sys.modules[mname] = types.ModuleType(mname)
            cls.__module__, cls.__qualname__, cls.__name__ = modname, name, name
            setattr(sys.modules[modname], name, cls)
        yield
    finally:
        for mname, mod in saved.items():
            if mod is None:
                sys.modules.pop(mname, None)
            else:
                sys.modules[mname] = mod


def write_chumpy_pickle(arrays: dict, path) -> None:
    """Pickle ``arrays`` the way the official MANO files are: chumpy Ch/Select wrappers and an
    old-scipy csc_matrix, protocol 2, with those module names (chumpy is not installed)."""
    import scipy.sparse as sp

    class Ch:  # state like chumpy's __getstate__: the instance dict minus caches
        pass

    class Select:
        pass

    class csc_matrix:  # noqa: N801 - the real name
        pass

    def ch(x):
        o = Ch()
        o.__dict__.update({"x": np.asarray(x, np.float64), "_dirty_vars": set(), "_itr": None,
                           "_depends_on_deps": {}, "_make_dense": False, "_make_sparse": False})
        return o

    def select(x):
        o = Select()
        flat = np.asarray(x, np.float64).ravel()
        o.__dict__.update({"a": ch(flat[::-1].copy()), "idxs": np.arange(flat.size)[::-1].copy(),
                           "preferred_shape": x.shape, "_dirty_vars": set()})
        return o

    def csc(x):
        s = sp.csc_matrix(x)
        o = csc_matrix()
        o.__dict__.update({"_shape": s.shape, "maxprint": 50, "data": s.data, "indices": s.indices,
                           "indptr": s.indptr, "has_sorted_indices": True})
        return o

    with fake_modules(**{"chumpy.ch.Ch": Ch, "chumpy.reordering.Select": Select,
                         "scipy.sparse.csc.csc_matrix": csc_matrix}):
        data = {
            "v_template": select(arrays["v_template"]),
            "f": arrays["f"],
            "J_regressor": csc(arrays["J_regressor"]),
            "weights": ch(arrays["weights"]),
            "kintree_table": arrays["kintree_table"],
            "shapedirs": ch(arrays["shapedirs"]),
            "posedirs": ch(arrays["posedirs"]),
            "hands_components": arrays["hands_components"],
            "hands_mean": ch(arrays["hands_mean"]),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        blob = pickle.dumps(data, protocol=2)
    for name in (b"chumpy.ch", b"chumpy.reordering", b"Select", b"scipy.sparse.csc", b"csc_matrix"):
        assert name in blob     # the file names the same globals as the official one
    with open(path, "wb") as fh:
        fh.write(blob)


@pytest.fixture(scope="session")
def mano_files(tmp_path_factory):
    """Folders: npz/ (MANO_RIGHT.npz), pkl/mano/ (MANO_RIGHT.pkl), both/ (right + exact-mirror left)."""
    root = tmp_path_factory.mktemp("mano")
    arrays = random_mano()
    (root / "npz").mkdir()
    np.savez(root / "npz" / "MANO_RIGHT.npz", **arrays)
    (root / "pkl" / "mano").mkdir(parents=True)
    write_chumpy_pickle(arrays, root / "pkl" / "mano" / "MANO_RIGHT.pkl")
    (root / "both").mkdir()
    np.savez(root / "both" / "MANO_RIGHT.npz", **arrays)
    write_chumpy_pickle(mirror_mano(arrays), root / "both" / "MANO_LEFT.pkl")
    return {"root": root, "arrays": arrays}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    # UV atlases for the random models go to a throwaway cache
    monkeypatch.setenv("HANDFIT_CACHE", str(tmp_path_factory.getbasetemp() / "handfit_cache"))


def params(model, B=2, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return {"global_orient": (torch.randn(B, 3, generator=g) * 0.5).to(device, dtype),
            "pose": (torch.randn(B, 45, generator=g) * 0.3).to(device, dtype),
            "shape": torch.randn(B, 10, generator=g).to(device, dtype),
            "transl": (torch.randn(B, 3, generator=g) * 0.1).to(device, dtype)}


# -- loading --------------------------------------------------------------------------
def test_chumpy_pickle_loads_like_npz(mano_files):
    root, ref = mano_files["root"], mano_files["arrays"]
    raw = load_mano_pickle(root / "pkl" / "mano" / "MANO_RIGHT.pkl")
    assert isinstance(raw, dict)
    for k in ("v_template", "J_regressor", "weights", "shapedirs", "posedirs", "hands_mean"):
        assert isinstance(raw[k], np.ndarray), k
        np.testing.assert_allclose(raw[k], ref[k], err_msg=k)   # Select, Ch and sparse resolved
    assert raw["bs_style"] == "lbs"
    a_pkl = read_mano_arrays(root / "pkl" / "mano" / "MANO_RIGHT.pkl")
    a_npz = read_mano_arrays(root / "npz" / "MANO_RIGHT.npz")
    for k in a_npz:
        np.testing.assert_allclose(a_pkl[k], a_npz[k], err_msg=k)


@pytest.mark.slow
def test_pkl_and_npz_models_agree(mano_files):
    root = mano_files["root"]
    m_npz = load_model("mano", mano_path=root / "npz")
    m_pkl = load_model("mano", mano_path=root / "pkl")          # found in the mano/ subfolder
    assert m_npz is not m_pkl
    p = params(m_npz)
    o1, o2 = m_npz(**p), m_pkl(**p)
    torch.testing.assert_close(o1.vertices, o2.vertices)
    torch.testing.assert_close(o1.keypoints, o2.keypoints)
    assert torch.equal(m_npz.faces, m_pkl.faces) and torch.equal(m_npz.uv_faces, m_pkl.uv_faces)


def test_file_resolution(mano_files, tmp_path):
    root = mano_files["root"]
    assert find_mano_files(root / "npz")["right"].name == "MANO_RIGHT.npz"
    assert find_mano_files(root / "pkl")["right"] == root / "pkl" / "mano" / "MANO_RIGHT.pkl"
    both = find_mano_files(root / "both" / "MANO_RIGHT.npz")          # a file: its sibling is found too
    assert both["left"].name == "MANO_LEFT.pkl"
    with pytest.raises(UsageError, match="--mano"):
        load_model("mano")
    with pytest.raises(UsageError, match="no such file"):
        load_model("mano", mano_path=tmp_path / "nope")
    with pytest.raises(ModelError, match="no MANO_RIGHT or MANO_LEFT"):
        load_model("mano", mano_path=tmp_path)
    only_left = tmp_path / "left_only"
    only_left.mkdir()
    np.savez(only_left / "MANO_LEFT.npz", **mirror_mano(mano_files["arrays"]))
    with pytest.raises(ModelError, match="MANO_RIGHT"):
        load_model("mano", side="right", mano_path=only_left)
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "MANO_RIGHT.npz", v_template=np.zeros((5, 3)))
    with pytest.raises(ModelError, match="missing"):
        load_model("mano", mano_path=bad)
    (bad / "MANO_RIGHT.npz").unlink()
    (bad / "MANO_RIGHT.pkl").write_bytes(b"\x80\x02}q\x00(X\x01")      # truncated pickle
    with pytest.raises(ModelError):
        load_model("mano", mano_path=bad)


# -- forward --------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_forward_shapes_and_gradients(mano_files, side, device):
    m = load_model("mano", side=side, mano_path=mano_files["root"] / "npz", device=device)
    assert m.name == "mano" and m.pose_dim == 45 and m.shape_dim == 10 and len(m.pose_names) == 15
    assert m.pose_lower.shape == (45,) and bool((m.pose_lower < m.pose_upper).all())
    assert bool((m.pose_lower <= 0).all() and (m.pose_upper >= 0).all())
    p = {k: v.requires_grad_() for k, v in params(m, B=3, device=device).items()}
    out = m(**p)
    V = mano_files["arrays"]["v_template"].shape[0]
    assert out.vertices.shape == (3, V, 3) and out.keypoints.shape == (3, 21, 3)
    (out.vertices.square().sum() + out.keypoints.square().sum()).backward()
    for k, v in p.items():
        assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0, k
    torch.testing.assert_close(out.keypoints[:, 0], p["transl"].detach())


def test_keypoints_are_mano_joints_and_tips(mano_files):
    m = load_model("mano", mano_path=mano_files["root"] / "npz", dtype=torch.float64)
    p = params(m, dtype=torch.float64)
    out = m._forward_right(p["pose"], p["shape"])
    j = m.layer(betas=p["shape"], global_orient=torch.zeros_like(p["transl"]), hand_pose=p["pose"]).joints
    kp = out.keypoints
    # MediaPipe order from MANO's (wrist, index, middle, pinky, ring, thumb)
    for mp, mano in ((0, 0), (1, 13), (2, 14), (3, 15), (5, 1), (7, 3), (9, 4), (13, 10), (17, 7), (19, 9)):
        torch.testing.assert_close(kp[:, mp], j[:, mano])
    for mp, finger in ((4, "thumb"), (8, "index"), (12, "middle"), (16, "ring"), (20, "pinky")):
        torch.testing.assert_close(kp[:, mp], out.vertices[:, TIP_VERTICES[finger]])


def test_mirrored_left_from_right(mano_files):
    right = load_model("mano", side="right", mano_path=mano_files["root"] / "npz", dtype=torch.float64)
    left = load_model("mano", side="left", mano_path=mano_files["root"] / "npz", dtype=torch.float64)
    assert left.mirror and left.side == "left"
    p = params(right, dtype=torch.float64)
    p["global_orient"].zero_()
    p["transl"].zero_()
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    r, lft = right(**p), left(**p)
    torch.testing.assert_close(lft.vertices, r.vertices * flip)
    torch.testing.assert_close(lft.keypoints, r.keypoints * flip)
    assert torch.equal(left.faces, right.faces[:, [0, 2, 1]])
    assert torch.equal(left.uv_faces, right.uv_faces[:, [0, 2, 1]])
    vol = lambda v, f: float((v[f][:, 0] * torch.linalg.cross(v[f][:, 1], v[f][:, 2])).sum())  # noqa: E731
    assert vol(lft.vertices[0], left.faces) == pytest.approx(vol(r.vertices[0], right.faces), rel=1e-9)


def test_native_left_file(mano_files):
    """MANO_LEFT (here: the exact mirror of MANO_RIGHT) is used as is; a mirrored pose gives the mirror image."""
    both = mano_files["root"] / "both"
    right = load_model("mano", side="right", mano_path=both, dtype=torch.float64)
    left = load_model("mano", side="left", mano_path=both, dtype=torch.float64)
    assert not left.mirror and left.native_left and left.source.endswith("MANO_LEFT.pkl")
    p = params(right, dtype=torch.float64)
    p["global_orient"].zero_()
    p["transl"].zero_()
    pl = dict(p, pose=(p["pose"].reshape(-1, 15, 3) * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)).reshape(-1, 45))
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(left(**pl).vertices, right(**p).vertices * flip)
    # the native left's limits are the mirror of the right's (x stays, y and z swap sign and bounds)
    lo_r, hi_r = right.pose_lower.reshape(15, 3), right.pose_upper.reshape(15, 3)
    lo_l, hi_l = left.pose_lower.reshape(15, 3), left.pose_upper.reshape(15, 3)
    torch.testing.assert_close(lo_l[:, 0], lo_r[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(lo_l[:, 1:], -hi_r[:, 1:], atol=1e-5, rtol=0)


def test_params_for_smplx_reproduce_vertices(mano_files):
    import smplx
    from smplx.utils import Struct

    m = load_model("mano", mano_path=mano_files["root"] / "npz", dtype=torch.float64)
    p = params(m, dtype=torch.float64)
    out = m(**p)
    d = m.mano_params_for_npz(**p)
    assert set(d) >= {"global_orient", "hand_pose", "betas", "transl"} and bool(d["is_rhand"])
    ref = smplx.MANO(model_path="MANO", data_struct=Struct(**read_mano_arrays(mano_files["root"] / "npz" / "MANO_RIGHT.npz")),
                     use_pca=False, flat_hand_mean=True, num_betas=10, dtype=torch.float64)
    o = ref(**{k: torch.as_tensor(d[k], dtype=torch.float64) for k in ("global_orient", "hand_pose", "betas", "transl")})
    torch.testing.assert_close(o.vertices, out.vertices, atol=1e-5, rtol=0)
    # the per-hand export the exporters use: same values, 1-D, smplx names
    e = m.export_params({k: v[1:2] for k, v in p.items()})
    assert e["model"] == "mano" and e["side"] == "right" and e["hand_pose"].shape == (45,)
    np.testing.assert_allclose(e["transl"], d["transl"][1], rtol=1e-6)
    np.testing.assert_allclose(e["betas"], d["betas"][1], rtol=1e-6)


def test_uv_atlas_cached(mano_files):
    from handfit.cache import cache_dir
    from handfit.models.mano import mano_uv_atlas

    a = mano_files["arrays"]
    m = load_model("mano", mano_path=mano_files["root"] / "npz")
    uv, uvf = m.uv_coords, m.uv_faces
    assert uvf.shape == m.faces.shape and uv.shape[1] == 2 and int(uvf.max()) == uv.shape[0] - 1
    assert bool((uv >= 0).all() and (uv <= 1).all())
    files = list(cache_dir().glob("mano_uv_*.npz"))
    assert files
    uv2, uvf2 = mano_uv_atlas(a["v_template"], m.faces.numpy())
    np.testing.assert_array_equal(uv2, uv.numpy())
    np.testing.assert_array_equal(uvf2, uvf.numpy())


# -- hostile pickles ------------------------------------------------------------------
class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "builtins.exec", "subprocess", "open"])
def test_hostile_pickle_refused(tmp_path, payload):
    import builtins
    import subprocess

    marker = tmp_path / "pwned"
    evil = {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "builtins.eval": _Reduce(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "builtins.exec": _Reduce(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess": _Reduce(subprocess.call, ["touch", str(marker)]),
        "open": _Reduce(builtins.open, str(marker), "w"),
    }[payload]
    # hidden inside an otherwise valid MANO dict
    arrays = random_mano()
    arrays["posedirs"] = evil
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "MANO_RIGHT.pkl").write_bytes(pickle.dumps(arrays, protocol=2))
    with pytest.raises(ModelError, match="refused") as e:
        load_model("mano", mano_path=folder)
    assert not marker.exists()
    name = {"os.system": "system", "builtins.eval": "eval", "builtins.exec": "exec",
            "subprocess": "call", "open": "open"}[payload]
    assert name in str(e.value)
    # plain pickle would have run it: the payload is real
    if payload == "os.system":
        pickle.loads(pickle.dumps(evil))
        assert marker.exists()


def test_restricted_unpickler_refuses_odd_globals():
    with pytest.raises(ModelError, match="numpy.ndarray"):
        loads_restricted(pickle.dumps(_Reduce(np.ndarray, (2,))))   # calling ndarray directly
    with pytest.raises(ModelError, match="posix.system|os.system"):
        loads_restricted(b"cposix\nsystem\n(S'true'\ntR.")
    assert loads_restricted(pickle.dumps({"a": np.arange(3.0)}, protocol=2))["a"].tolist() == [0.0, 1.0, 2.0]
    assert loads_restricted(pickle.dumps(np.float32(2.5), protocol=2)) == 2.5


@pytest.mark.slow
def test_fit_with_mano_end_to_end(mano_files, tmp_path):
    """Everything above the model layer runs with MANO: IK init, both stages, exports."""
    import json

    from click.testing import CliRunner

    from handfit.cli import main

    example = Path(__file__).resolve().parents[1] / "examples" / "hand.jpg"
    r = CliRunner().invoke(main, ["fit", str(example), "-o", str(tmp_path), "-q",
                                  "--mano", str(mano_files["root"] / "npz")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "hand" / "result.json").read_text())
    assert doc["model"] == "mano"
    hand = doc["hands"][0]
    assert hand["init"] == "ik"  # no shipped regressor matches MANO
    assert {"global_orient", "hand_pose", "betas", "transl"} <= set(hand["params"])
    params = np.load(tmp_path / "hand" / hand["files"]["params"])
    assert params["hand_pose"].shape[-1] == 45


def test_texture_prior_fills_the_mano_atlas(mano_files):
    """The texture prior only sees uv coordinates, so MANO's atlas works like
    Anny's: a flat-coloured render of the sheet unwraps and fills to that colour."""
    from handfit import render as R
    from handfit.texture.fill import prior_fill
    from handfit.texture.prior import PriorConfig, TexturePrior

    m = load_model("mano", mano_path=mano_files["root"] / "npz")
    p = {k: torch.zeros_like(v) for k, v in params(m, B=1).items()}
    p["global_orient"] = torch.tensor([[-np.pi / 2, 0.0, 0.0]])   # the sheet faces the camera
    p["transl"] = torch.tensor([[-0.09, 0.0, 0.35]])
    v = m(**p).vertices
    K = torch.tensor([[200.0, 0, 47.5], [0, 200.0, 47.5], [0, 0, 1]])
    g = R.rasterize_mesh(v, m.faces, K, (96, 96), uv=m.uv_coords, uv_faces=m.uv_faces, points=True, backend="cpu")
    assert int(g.cover.sum()) > 500
    net = TexturePrior(PriorConfig(dim=16, heads=2, layers=1, cross_layers=1, grid=4, freqs=3, channels=(8,),
                                   size=32)).eval()
    colour = torch.tensor([0.3, 0.6, 0.2])
    tex = prior_fill(net, colour.expand(1, 96, 96, 3).contiguous(), g, size=64)
    assert tex.shape == (1, 64, 64, 3)
    assert torch.allclose(tex, colour.expand_as(tex), atol=1e-3)
