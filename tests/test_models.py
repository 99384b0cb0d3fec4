"""The Anny hand model, the model loader and the cache folder.

The first session on a machine builds the Anny cache once (the session fixture
below; about 1-2 minutes with a cold anny install, seconds afterwards).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from handfit.cache import cache_dir
from handfit.errors import UsageError
from handfit.models import KEYPOINT_NAMES, load_model
from handfit.models import lbs
from handfit.models.anny import AnnyHand

FINGERS = {"thumb": (1, 2, 3, 4), "index": (5, 6, 7, 8), "middle": (9, 10, 11, 12),
           "ring": (13, 14, 15, 16), "pinky": (17, 18, 19, 20)}


@pytest.fixture(scope="session")
def anny():
    """Both Anny sides on the CPU in float64 (builds the cache on a fresh machine)."""
    return {side: load_model("anny", side=side, dtype=torch.float64) for side in ("right", "left")}


def signed_volume(v: torch.Tensor, faces: torch.Tensor) -> float:
    tri = v[faces]                                            # (F,3,3)
    return float((tri[:, 0] * torch.linalg.cross(tri[:, 1], tri[:, 2])).sum() / 6)


def palm_normal(kp: torch.Tensor, side: str) -> torch.Tensor:
    """Unit normal pointing out of the palm, from wrist, index MCP and pinky MCP keypoints."""
    n = torch.linalg.cross(kp[5] - kp[0], kp[17] - kp[0])
    n = n / n.norm()
    return n if side == "right" else -n


def random_params(model, B, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, model.pose_dim, generator=g, dtype=dtype)
    lo, hi = model.pose_lower.cpu().to(dtype), model.pose_upper.cpu().to(dtype)
    p = {"global_orient": torch.randn(B, 3, generator=g, dtype=dtype),
         "pose": lo + (hi - lo) * u,
         "shape": torch.randn(B, model.shape_dim, generator=g, dtype=dtype),
         "transl": torch.randn(B, 3, generator=g, dtype=dtype) * 0.1}
    return {k: v.to(device) for k, v in p.items()}


# -- interface ------------------------------------------------------------------------
def test_attributes(anny):
    m = anny["right"]
    assert m.name == "anny" and m.side == "right" and not m.mirror
    assert anny["left"].mirror and anny["left"].side == "left"
    assert m.pose_dim == 57 and len(m.pose_names) == 19 and m.shape_dim == 10 and len(m.shape_names) == 10
    assert m.pose_names[:5] == ["finger1-1", "finger1-2", "finger1-3", "metacarpal1", "finger2-1"]
    assert m.num_vertices == 1609 and tuple(m.faces.shape) == (3196, 3)
    assert m.faces.dtype == torch.long and m.uv_faces.shape == m.faces.shape
    assert m.pose_lower.shape == (57,) and m.pose_upper.shape == (57,)
    assert bool((m.pose_lower < m.pose_upper).all())
    assert bool((m.pose_lower <= 0).all() and (m.pose_upper >= 0).all())   # the rest pose is allowed
    assert len(m.tip_vertices) == 5
    e = m.export_params({k: v for k, v in m.zero_params(1).items()})
    assert e["model"] == "anny" and e["side"] == "right" and e["pose"].shape == (57,) and e["shape"].shape == (10,)


@pytest.mark.parametrize("side", ["right", "left"])
def test_forward_shapes_and_gradients(side, device):
    m = load_model("anny", side=side, device=device)
    p = random_params(m, 3, dtype=torch.float32, device=device)
    p = {k: v.requires_grad_() for k, v in p.items()}
    out = m(**p)
    assert out.vertices.shape == (3, 1609, 3) and out.keypoints.shape == (3, 21, 3)
    assert out.vertices.device.type == device.type and out.vertices.dtype == torch.float32
    (out.vertices.square().sum() + out.keypoints.square().sum()).backward()
    for k, v in p.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k
        assert v.grad.abs().sum() > 0, k
    # the batch entries are independent
    one = m(**{k: v[1:2].detach() for k, v in p.items()})
    torch.testing.assert_close(one.vertices[0], out.vertices[1].detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keypoints_alone_are_forwards_to_the_bit(side, dtype, device):
    """model.keypoints (no skinning) gives forward's keypoints exactly, and the same gradients."""
    m = load_model("anny", side=side, device=device, dtype=dtype)
    p = random_params(m, 4, dtype=dtype, device=device)
    a = {k: v.clone().requires_grad_() for k, v in p.items()}
    b = {k: v.clone().requires_grad_() for k, v in p.items()}
    kp_full, kp_alone = m(**a).keypoints, m.keypoints(**b)
    assert kp_alone.shape == (4, 21, 3) and kp_alone.dtype == dtype and kp_alone.device.type == device.type
    assert torch.equal(kp_full, kp_alone)
    kp_full.square().sum().backward()
    kp_alone.square().sum().backward()
    for k in p:
        torch.testing.assert_close(a[k].grad, b[k].grad, atol=0, rtol=1e-6)


def test_zero_pose_gradients_finite(anny):
    m = anny["right"]
    p = {k: v.requires_grad_() for k, v in m.zero_params(2, dtype=torch.float64).items()}
    out = m(**p)
    out.keypoints.sum().backward()
    assert all(torch.isfinite(v.grad).all() for v in p.values())


def test_wrist_at_transl_and_rigid_global_orient(anny):
    m = anny["right"]
    p = random_params(m, 2)
    out = m(**p)
    torch.testing.assert_close(out.keypoints[:, 0], p["transl"])
    p0 = dict(p, global_orient=torch.zeros_like(p["global_orient"]))
    out0 = m(**p0)
    d = lambda o: torch.cdist(o.keypoints, o.keypoints)  # noqa: E731
    torch.testing.assert_close(d(out), d(out0))


# -- mirroring ------------------------------------------------------------------------
def test_left_is_mirrored_right(anny):
    right, left = anny["right"], anny["left"]
    p = random_params(right, 2)
    p["global_orient"].zero_()
    p["transl"].zero_()
    r, lft = right(**p), left(**p)
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(lft.vertices, r.vertices * flip)
    torch.testing.assert_close(lft.keypoints, r.keypoints * flip)
    assert torch.equal(left.faces, right.faces[:, [0, 2, 1]])
    assert torch.equal(left.uv_faces, right.uv_faces[:, [0, 2, 1]])
    # outward normals on both: positive signed volume, also posed
    for model, out in ((right, r), (left, lft)):
        assert signed_volume(out.vertices[0], model.faces) > 1e-4   # a hand is ~3e-4 m^3


# -- keypoints ------------------------------------------------------------------------
def test_keypoint_order_in_rest_pose(anny):
    m = anny["right"]
    kp = m(**m.zero_params(1, dtype=torch.float64)).keypoints[0]
    assert len(KEYPOINT_NAMES) == kp.shape[0] == 21
    assert kp[0].abs().max() < 1e-9                           # the wrist is the origin
    dist = kp.norm(dim=1)
    for finger, chain in FINGERS.items():
        dd = dist[list(chain)]
        assert bool((dd[1:] > dd[:-1]).all()), (finger, dd)   # joints get farther from the wrist
    # the hand's own frame: fingers along -y, thumb on +x, palm facing -z
    assert kp[12, 1] < -0.12 and kp[4, 0] > kp[20, 0]
    assert palm_normal(kp, "right") @ torch.tensor([0, 0, -1.0], dtype=kp.dtype) > 0.8
    # a plausible adult hand: 15-22 cm from wrist to the middle fingertip
    assert 0.15 < dist[12] < 0.22


def test_keypoints_follow_pose_and_shape(anny):
    m = anny["right"]
    z = m.zero_params(1, dtype=torch.float64)
    k0 = m(**z).keypoints
    big = dict(z, shape=torch.tensor([[2.0] + [0.0] * 9], dtype=torch.float64))
    k1 = m(**big).keypoints
    assert k1[0, 12].norm() > k0[0, 12].norm() + 0.01          # +pc1 makes the hand bigger
    bent = dict(z, pose=m.pose_upper[None].clone() * 0.5)
    k2 = m(**bent).keypoints
    assert (k2[0, 8] - k0[0, 8]).norm() > 0.02                 # the index tip moved
    raw = AnnyHand("right", keypoint_offsets=None).double()
    tips = raw(**bent).vertices[0, raw.tip_vertices]
    torch.testing.assert_close(raw(**bent).keypoints[0, [4, 8, 12, 16, 20]], tips)


def test_shipped_keypoint_calibration_is_applied(anny):
    """The default model reads handfit/weights/keypoints_anny.pt: its keypoints differ from
    the raw skeleton's by the offsets, carried rigidly by their bones."""
    m = anny["right"]
    assert m.keypoints_calibrated
    assert 0.001 < m.keypoint_offsets.norm(dim=-1).max() < 0.03      # millimetres to centimetres
    raw = AnnyHand("right", keypoint_offsets=None).double()
    z = m.zero_params(1, dtype=torch.float64)
    for pose in (z["pose"], m.pose_upper[None] * 0.6, m.pose_lower[None] * 0.6):
        p = dict(z, pose=pose)
        a, b = m(**p), raw(**p)
        # the same mesh, translated so that each model's wrist keypoint is at transl
        shift = a.vertices[0, 0] - b.vertices[0, 0]
        torch.testing.assert_close(a.vertices[0], b.vertices[0] + shift)
        # every keypoint is offset by exactly |offset| (mean shape: palm scale 1)
        d = (a.keypoints[0] - (b.keypoints[0] + shift)).norm(dim=-1)
        torch.testing.assert_close(d, m.keypoint_offsets.double().norm(dim=-1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_keypoint_offsets_follow_the_bones(side):
    """A (21,3) offset on the index tip follows the distal phalanx when it bends."""
    off = torch.zeros(21, 3, dtype=torch.float64)
    off[8] = torch.tensor([0.0, 0.0, 0.01], dtype=torch.float64)   # 1 cm towards the back of the hand
    m = AnnyHand(side, keypoint_offsets=off).double()
    raw = AnnyHand(side, keypoint_offsets=None).double()
    z = m.zero_params(1, dtype=torch.float64)
    straight = m(**z)
    bent_pose = z["pose"].clone()
    bent_pose[0, m.pose_names.index("finger2-3") * 3] = 1.0       # flex the index DIP
    for pose in (z["pose"], bent_pose):
        a, b = m(**dict(z, pose=pose)), raw(**dict(z, pose=pose))
        assert abs(float((a.keypoints[0, 8] - b.keypoints[0, 8]).norm()) - 0.01) < 1e-6
    # bending changes the offset's direction: it is not a constant shift
    bent = m(**dict(z, pose=bent_pose))
    d0 = straight.keypoints[0, 8] - raw(**z).keypoints[0, 8]
    d1 = bent.keypoints[0, 8] - raw(**dict(z, pose=bent_pose)).keypoints[0, 8]
    assert float((d0 - d1).norm()) > 0.005


# -- pose limits ----------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_flexion_within_limits_bends_towards_palm(anny, side):
    """x (flexion) of every finger joint moves the fingertip palm-wards; the thumb's curls it
    towards the little finger. Negative flexion (extension, within limits) does the opposite."""
    m = anny[side]
    z = m.zero_params(1, dtype=torch.float64)
    rest = m(**z).keypoints[0]
    n = palm_normal(rest, side)
    bones = {"thumb": ("finger1-1", "finger1-2", "finger1-3"), "index": ("finger2-1", "finger2-2", "finger2-3"),
             "middle": ("finger3-1", "finger3-2", "finger3-3"), "ring": ("finger4-1", "finger4-2", "finger4-3"),
             "pinky": ("finger5-1", "finger5-2", "finger5-3")}
    for finger, names in bones.items():
        tip = FINGERS[finger][3]
        for b in names:
            i = 3 * m.pose_names.index(b)                       # x = flexion
            for value, sign in ((min(0.5, float(m.pose_upper[i])), 1), (float(m.pose_lower[i]), -1)):
                pose = torch.zeros(1, m.pose_dim, dtype=torch.float64)
                pose[0, i] = value
                kp = m(**dict(z, pose=pose)).keypoints[0]
                if finger == "thumb":
                    closer = (rest[tip] - rest[17]).norm() - (kp[tip] - rest[17]).norm()
                    assert sign * closer > 0.002, (side, b, value, float(closer))
                else:
                    move = float((kp[tip] - rest[tip]) @ n)
                    assert sign * move > 0.002, (side, b, value, move)


# -- UVs ------------------------------------------------------------------------------
def test_uvs_fill_unit_square_unmirrored(anny):
    m = anny["right"]
    uv = m.uv_coords
    assert uv.shape[1] == 2 and int(m.uv_faces.max()) == uv.shape[0] - 1
    assert bool((uv >= 0).all() and (uv <= 1).all())
    span = uv.max(0).values - uv.min(0).values
    assert span.max() > 0.98                                   # renormalised to the unit square
    # v grows down the image: faces wound CCW from outside must look CCW on the image
    t = m.face_uvs.double()
    area = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 1, 1] - t[:, 0, 1]) * (t[:, 2, 0] - t[:, 0, 0])
    assert (area < 0).double().mean() > 0.95


# -- LBS primitives -------------------------------------------------------------------
def test_lbs_identity_pose_is_rest():
    g = torch.Generator().manual_seed(0)
    B, V, J = 2, 50, 4
    parents = [-1, 0, 1, 1]
    verts, joints = torch.randn(B, V, 3, generator=g), torch.randn(B, J, 3, generator=g)
    w = torch.rand(V, J, generator=g)
    w = w / w.sum(1, keepdim=True)
    frames = torch.linalg.qr(torch.randn(B, J, 3, 3, generator=g))[0]
    eye = torch.eye(3).expand(B, J, 3, 3)
    v, j = lbs.lbs(verts, joints, frames, eye, w, parents)
    torch.testing.assert_close(v, verts)
    torch.testing.assert_close(j, joints)
    # rotating the root about its head rigidly moves everything
    R = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0].float()
    R = R * torch.det(R)
    rots = eye.clone()
    rots[:, 0] = frames[:, 0].transpose(-1, -2) @ R @ frames[:, 0]
    v2, _ = lbs.lbs(verts, joints, frames, rots, w, parents)
    torch.testing.assert_close(v2, (verts - joints[:, :1]) @ R.T + joints[:, :1], atol=1e-5, rtol=0)


def test_rigid_chain_matches_bone_by_bone_recursion():
    """rigid_chain works a tree level at a time; the plain recursion X_j = X_parent o
    (x -> L_j (x - h_j) + h_j), bone by bone, must give the same transforms and
    gradients, on a tree whose levels are interleaved in index order."""
    g = torch.Generator().manual_seed(1)
    parents = [-1, 0, 1, 0, 2, 3, 3, 5, 1]
    B, J = 2, len(parents)
    L = torch.linalg.qr(torch.randn(B, J, 3, 3, generator=g, dtype=torch.float64))[0].requires_grad_()
    h = torch.randn(B, J, 3, generator=g, dtype=torch.float64).requires_grad_()
    rot, tr = lbs.rigid_chain(L, h, parents)
    R, T = [], []
    for j, p in enumerate(parents):
        t = h[:, j] - (L[:, j] @ h[:, j, :, None])[..., 0]
        R.append(L[:, j] if p < 0 else R[p] @ L[:, j])
        T.append(t if p < 0 else (R[p] @ t[..., None])[..., 0] + T[p])
    torch.testing.assert_close(rot, torch.stack(R, 1))
    torch.testing.assert_close(tr, torch.stack(T, 1))
    ga = torch.autograd.grad((rot.sum() + tr.square().sum()), (L, h))
    gb = torch.autograd.grad((torch.stack(R, 1).sum() + torch.stack(T, 1).square().sum()), (L, h))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError):
        lbs.rigid_chain(L[:, :3], h[:, :3], [-1, 2, 0])


# -- Anny itself ----------------------------------------------------------------------
@pytest.mark.slow
def test_matches_anny_forward(anny):
    """Our cached model + LBS against anny's own (warp) forward, for random shapes and poses."""
    anny_pkg = pytest.importorskip("anny")
    from handfit.geometry import axis_angle_to_matrix
    from handfit.geometry import kabsch
    from handfit.models.anny import ARTICULATED

    dt = torch.float64
    hand = anny["right"]
    ref = anny_pkg.Anny(rig="anny-hand.R", topology="hand.R")
    ref.reference_bone_orientations = None      # 'local-bone' deltas then rotate bones in their rest frames
    g = torch.Generator().manual_seed(3)
    n = 4
    ph = 0.15 + 0.7 * torch.rand(n, 6, generator=g, dtype=dt)
    ph[:, 1] = 0.45 + 0.5 * torch.rand(n, generator=g, dtype=dt)    # teens to elderly
    lo, hi = hand.pose_lower, hand.pose_upper
    pose = lo + (hi - lo) * torch.rand(n, hand.pose_dim, generator=g, dtype=dt)
    with torch.no_grad():
        rest = ref(pose_parameters=None, phenotype_kwargs=ph)
        P = rest["rest_bone_poses"]
        D = torch.eye(4, dtype=dt).repeat(n, 21, 1, 1)
        D[:, 0] = P[:, 0]
        D[:, list(ARTICULATED), :3, :3] = axis_angle_to_matrix(pose.reshape(n, -1, 3))
        posed = ref(pose_parameters=D, phenotype_kwargs=ph, pose_parameterization="local-bone")
        wrist = rest["rest_bone_heads"][:, 1:2]
        Q = kabsch(rest["rest_vertices"] - wrist, hand.v_template.expand_as(rest["rest_vertices"]), center=False)      # into handfit's frame
        align = lambda x: (x - wrist) @ Q.transpose(1, 2)                 # noqa: E731
        target = align(posed["vertices"])
        # 1) our LBS on anny's exact rest state: equal up to round-off
        v, j = lbs.lbs(align(rest["rest_vertices"]), align(rest["rest_bone_heads"]), Q[:, None] @ P[..., :3, :3],
                       hand.pose_rotmats(pose), hand.weights, hand.parents)
        assert (v - target).norm(dim=-1).max() < 1e-5
        # 2) the full model with the shape projected on the 10-value basis
        A = hand.shapedirs.reshape(hand.shape_dim, -1).T
        resid = (align(rest["rest_vertices"]) - hand.v_template).reshape(n, -1, 1)
        s = torch.linalg.lstsq(A.expand(n, -1, -1), resid).solution[..., 0]
        out = hand._forward_right(pose, s)
        err = (out.vertices - target).norm(dim=-1)
        assert err.max() < 3e-3 and err.mean() < 1e-3, (float(err.max()), float(err.mean()))


# -- loading --------------------------------------------------------------------------
@pytest.mark.slow
def test_cache_loads_without_anny(anny):
    """A built cache loads and runs without importing anny or warp (its load time: bench/, not here)."""
    code = textwrap.dedent("""
        import sys
        import torch
        from handfit.models import load_model
        m = load_model("anny")
        m(**m.zero_params(1))
        print("anny" in sys.modules, "warp" in sys.modules)
    """)
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    anny_loaded, warp_loaded = out.stdout.split()
    assert anny_loaded == "False" and warp_loaded == "False"
    assert "building" not in out.stderr


def test_resources_share_instances_and_load_model_checks_args(anny, res):
    a = res.model("anny", "left", dtype=torch.float64)
    assert res.model("anny", "left", dtype=torch.float64) is a         # built once, then shared
    assert res.model("anny", "right", dtype=torch.float64) is not a
    assert load_model("anny", side="left", dtype=torch.float64) is not anny["left"]  # no hidden cache
    with pytest.raises(UsageError, match="unknown hand model"):
        load_model("smplx")
    with pytest.raises(UsageError, match="side"):
        load_model("anny", side="middle")


def test_cache_dir_env(monkeypatch, tmp_path):
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("HANDFIT_CACHE", str(target))
    assert cache_dir() == target and target.is_dir()
    monkeypatch.delenv("HANDFIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "handfit"
