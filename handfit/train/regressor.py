"""Train the keypoint regressor shipped in ``handfit/weights/regressor_<model>.pt``.

It learns MediaPipe-world-landmarks -> (global orientation, pose, shape) from
synthetic hands of the chosen model:

* poses drawn inside the anatomical limits (half uniform in the box, half
  blended towards the rest pose so relaxed hands are common);
* shapes ~ N(0, 0.8²);
* uniformly random global rotations;
* detector-like corruption: each bone's length scaled by 1 + N(0, 0.08²)
  (MediaPipe's skeleton is not the model's), then per-landmark noise of 3%
  of the palm length, twice that along the camera axis.

The loss compares rotations, pose, shape, and — through the model — the
clean keypoints. Fixed seed: rerunning reproduces the shipped weights on the
same torch build.

    python -m handfit.train.regressor --model anny --out handfit/weights/regressor_anny.pt
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ..geometry import matrix_to_axis_angle
from ..keypoints import TREE_BONES
from ..fitting import losses as L
from ..fitting.init import KeypointRegressor, normalise_landmarks


def random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform rotations (n,3,3) from normalised Gaussian quaternions."""
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(n, 3, 3)


def sample_batch(model, n: int, gen: torch.Generator):
    """Synthetic (noisy landmarks (n,21,3), R (n,3,3), pose (n,P), shape (n,S), clean keypoints (n,21,3))."""
    lo, hi = model.pose_lower.cpu(), model.pose_upper.cpu()
    u = lo + (hi - lo) * torch.rand(n, lo.numel(), generator=gen)
    blend = torch.where(torch.rand(n, 1, generator=gen) < 0.5, torch.ones(n, 1), torch.rand(n, 1, generator=gen))
    pose = u * blend
    shape = 0.8 * torch.randn(n, model.shape_dim, generator=gen)
    R = random_rotations(n, gen)
    go = matrix_to_axis_angle(R)
    with torch.no_grad():
        kp = model(go, pose, shape, torch.zeros(n, 3)).keypoints  # (n,21,3) wrist at origin
    noisy = kp.clone()
    # Re-chain the kinematic tree with perturbed bone lengths (parents come first in TREE_BONES).
    for parent, child in TREE_BONES:
        bone = kp[:, child] - kp[:, parent]
        noisy[:, child] = noisy[:, parent] + bone * (1 + 0.08 * torch.randn(n, 1, generator=gen))
    palm = (kp[:, 9] - kp[:, 0]).norm(dim=-1)[:, None, None]
    noise = torch.randn(n, 21, 3, generator=gen) * palm * 0.03
    noise[..., 2] *= 2
    return noisy + noise, R, pose, shape, kp


def train(model, steps: int = 4000, batch: int = 256, lr: float = 1e-3, seed: int = 0, hidden: int = 512,
          depth: int = 3, log=print):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = KeypointRegressor(model.pose_lower, model.pose_upper, model.shape_dim, hidden=hidden, depth=depth)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    zeros = torch.zeros(batch, 3)
    t0 = time.time()
    for step in range(1, steps + 1):
        x, R, pose, shape, kp = sample_batch(model, batch, gen)
        feats, _ = normalise_landmarks(x, mirror=False)
        R_hat, pose_hat, shape_hat = net(feats)
        kp_hat = model(matrix_to_axis_angle(R_hat), pose_hat, shape_hat, zeros).keypoints
        loss_kp = L.keypoint_3d_loss(kp_hat, kp).mean()
        loss_rot = (R_hat - R).square().sum((1, 2)).mean()
        loss_pose = (pose_hat - pose).square().mean()
        loss_shape = (shape_hat - shape).square().mean()
        loss = 10 * loss_kp + loss_rot + loss_pose + 0.1 * loss_shape
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  kp {loss_kp.item():.4f}  rot {loss_rot.item():.4f}  "
                f"pose {loss_pose.item():.4f}  shape {loss_shape.item():.3f}  ({time.time() - t0:.0f}s)")
    return net


@torch.no_grad()
def evaluate(model, net, n: int = 2000, seed: int = 123) -> dict:
    """Held-out synthetic hands: PA-free keypoint error (mm) and rotation error (deg)."""
    gen = torch.Generator().manual_seed(seed)
    x, R, pose, shape, kp = sample_batch(model, n, gen)
    feats, _ = normalise_landmarks(x, mirror=False)
    R_hat, pose_hat, shape_hat = net(feats)
    kp_hat = model(matrix_to_axis_angle(R_hat), pose_hat, shape_hat, torch.zeros(n, 3)).keypoints
    err_mm = ((kp_hat - kp[:, :1]) - (kp - kp[:, :1])).norm(dim=-1).mean() * 1000
    cos = ((R_hat.transpose(1, 2) @ R).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    rot_deg = torch.rad2deg(torch.acos(cos.clamp(-1, 1))).mean()
    return {"root_relative_kp_mm": float(err_mm), "rotation_deg": float(rot_deg)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="anny", choices=["anny", "mano"])
    ap.add_argument("--mano", default=None, help="MANO file/folder (for --model mano)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from ..models import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(args.model, side="right", mano_path=args.mano)
    net = train(model, steps=args.steps, batch=args.batch, seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    metrics = evaluate(model, net)
    print(f"held-out synthetic: {metrics}", file=sys.stderr)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    torch.save({"state": state, "meta": {"model": model.name, "pose_dim": model.pose_dim, "shape_dim": model.shape_dim,
                                         "hidden": 512, "depth": 3, "steps": args.steps, "seed": args.seed,
                                         "eval": metrics}}, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
