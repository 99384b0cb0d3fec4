"""Initial pose, shape and camera translation for each detected hand.

* With a trained regressor in ``handfit/weights/`` (``regressor_<model>.pt``), a small
  MLP maps MediaPipe's world landmarks to global orientation, pose and shape.
* Without one (e.g. MANO before a regressor is trained for it), a short
  inverse-kinematics fit against the same landmarks stands in; the result's
  ``init`` field says which was used.
* Translation always comes from the 2D landmarks by linear least squares.
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry import kabsch, matrix_to_axis_angle, rotation_6d_to_matrix
from . import losses as L

PALM = [0, 5, 9, 13, 17]  # wrist and the four finger MCPs: the rigid part of the hand


def normalise_landmarks(world: torch.Tensor, mirror: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Root-relative landmarks scaled to unit wrist->middle-MCP length; left hands mirrored to right.

    world: (B,21,3) metres -> (features (B,21,3), scale (B,))
    """
    rel = world - world[:, :1]
    if mirror:
        rel = rel * rel.new_tensor([-1.0, 1.0, 1.0])
    scale = rel[:, 9].norm(dim=-1).clamp(min=1e-6)
    return rel / scale[:, None, None], scale


class KeypointRegressor(nn.Module):
    """MLP: normalised right-hand landmarks (B,21,3) -> 6D orientation (B,6), pose (B,P), shape (B,S).

    Pose is predicted inside the model's anatomical box through a sigmoid, so
    every prediction is a valid hand.
    """

    def __init__(self, pose_lower, pose_upper, shape_dim: int, hidden: int = 512, depth: int = 3):
        super().__init__()
        self.register_buffer("pose_lower", torch.as_tensor(pose_lower, dtype=torch.float32).clone())
        self.register_buffer("pose_upper", torch.as_tensor(pose_upper, dtype=torch.float32).clone())
        self.shape_dim = shape_dim
        P = self.pose_lower.numel()
        layers, d = [], 63
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.GELU()]
            d = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, 6 + P + shape_dim)
        with torch.no_grad():  # start at identity rotation, mid-range pose, mean shape
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()
            self.head.bias[:6] = torch.tensor([1.0, 0, 0, 0, 1.0, 0])

    def forward(self, x: torch.Tensor):
        h = self.body(x.reshape(x.shape[0], -1))
        out = self.head(h)
        P = self.pose_lower.numel()
        d6, pz, shape = out[:, :6], out[:, 6:6 + P], out[:, 6 + P:]
        lo, hi = self.pose_lower, self.pose_upper
        # Centre the sigmoid on zero pose (inside the box) so zero logits = rest pose.
        mid = (0 - lo) / (hi - lo).clamp(min=1e-6)
        bias = torch.log(mid.clamp(1e-3, 1 - 1e-3) / (1 - mid.clamp(1e-3, 1 - 1e-3)))
        pose = lo + (hi - lo) * torch.sigmoid(pz + bias)
        return rotation_6d_to_matrix(d6), pose, shape


def regressor_file(model_name: str) -> str:
    """File name of the shipped regressor for a hand model, in ``handfit/weights/``."""
    return f"regressor_{model_name}.pt"


def load_regressor(model, device, dtype=torch.float32) -> KeypointRegressor | None:
    """The shipped regressor for ``model``, read from ``handfit/weights/``, or None when
    there is none matching it. Read anew on every call: keep it (handfit.fitting.Resources does)."""
    from ..weights import load_weights

    # MANO has no shipped regressor: that is expected, not worth a warning.
    ckpt = load_weights(regressor_file(model.name), "the keypoint regressor (initialisation falls back to IK)",
                        warn=model.name == "anny")
    if ckpt is None:
        return None
    meta = ckpt["meta"]
    if meta["pose_dim"] != model.pose_dim or meta["shape_dim"] != model.shape_dim:
        return None
    net = KeypointRegressor(ckpt["state"]["pose_lower"], ckpt["state"]["pose_upper"], meta["shape_dim"],
                            hidden=meta["hidden"], depth=meta["depth"])
    net.load_state_dict(ckpt["state"])
    return net.to(device=device, dtype=dtype).eval()


def mirror_rotation(R: torch.Tensor) -> torch.Tensor:
    """M R M with M = diag(-1,1,1): the same rotation seen in the mirrored world. (B,3,3)"""
    M = R.new_tensor([-1.0, 1.0, 1.0])
    return R * M[:, None] * M[None, :]


def init_translation(kp3d: torch.Tensor, kp2d: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Translation t so that kp3d + t projects onto kp2d, by linear least squares.

    kp3d: (B,N,3) keypoints already rotated into camera axes (any origin);
    kp2d: (B,N,2) pixels; K: (B,3,3). -> (B,3) metres.
    From u = fx (X+tx)/(Z+tz) + cx:  fx tx - (u-cx) tz = (u-cx) Z - fx X, and likewise for v.
    """
    fx, fy, cx, cy = K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None]
    X, Y, Z = kp3d.unbind(-1)
    du, dv = kp2d[..., 0] - cx, kp2d[..., 1] - cy  # (B,N)
    zeros = torch.zeros_like(du)
    Au = torch.stack([fx.expand_as(du), zeros, -du], -1)  # (B,N,3)
    Av = torch.stack([zeros, fy.expand_as(dv), -dv], -1)
    A = torch.cat([Au, Av], 1)  # (B,2N,3)
    b = torch.cat([du * Z - fx * X, dv * Z - fy * Y], 1)[..., None]  # (B,2N,1)
    t = torch.linalg.lstsq(A.double(), b.double()).solution[..., 0]
    t = t.to(kp3d.dtype)
    t[:, 2] = t[:, 2].clamp(min=0.05)  # keep the hand in front of the camera
    return t


@torch.no_grad()
def regress(model, net: KeypointRegressor, world: torch.Tensor):
    """Regressor init. world: (B,21,3) -> (global_orient (B,3), pose (B,P), shape (B,S))."""
    x, _ = normalise_landmarks(world, mirror=model.side == "left")
    R, pose, shape = net(x.to(next(net.parameters()).dtype))
    if model.side == "left":
        R = mirror_rotation(R)
    return matrix_to_axis_angle(R).to(world.dtype), pose.to(world.dtype), shape.to(world.dtype)


def inverse_kinematics(model, world: torch.Tensor, iters: int = 150):
    """Fallback init: orient the rest hand onto the palm landmarks (Kabsch), then
    Adam over orientation, pose and shape against the scale-free landmarks.

    world: (B,21,3) -> (global_orient (B,3), pose (B,P), shape (B,S))
    """
    B = world.shape[0]
    p = model.zero_params(B, device=world.device, dtype=world.dtype)
    with torch.no_grad():
        rest = model(p["global_orient"], p["pose"], p["shape"], p["transl"]).keypoints
        rest_n, tgt_n = L._normalise(rest), L._normalise(world)
        R = kabsch(rest_n[:, PALM], tgt_n[:, PALM])
    go = matrix_to_axis_angle(R).requires_grad_(True)
    pose = p["pose"].clone().requires_grad_(True)
    shape = p["shape"].clone().requires_grad_(True)
    opt = torch.optim.Adam([go, pose, shape], lr=0.03)
    for _ in range(iters):
        out = model(go, pose, shape, p["transl"])
        loss = (L.keypoint_3d_loss(out.keypoints, world)
                + 10 * L.pose_limit_loss(pose, model.pose_lower, model.pose_upper)
                + 1e-3 * L.shape_loss(shape)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return go.detach(), pose.detach(), shape.detach()


def initialise(model, world: torch.Tensor, kp2d: torch.Tensor, K: torch.Tensor, net=None):
    """Initial parameters for B hands of one model (one side).

    world: (B,21,3) MediaPipe world landmarks (metres); kp2d: (B,21,2); K: (B,3,3).
    -> (params dict of (B,·) tensors, method str: "regressor" or "ik")
    """
    if net is not None:
        go, pose, shape = regress(model, net, world)
        method = "regressor"
    else:
        go, pose, shape = inverse_kinematics(model, world)
        method = "ik"
    zeros = torch.zeros_like(go)
    with torch.no_grad():
        kp = model(go, pose, shape, zeros).keypoints  # (B,21,3), wrist at origin
        t = init_translation(kp, kp2d, K)
    return {"global_orient": go, "pose": pose, "shape": shape, "transl": t}, method
