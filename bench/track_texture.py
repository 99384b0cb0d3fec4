"""One texture per video track on a synthetic turning hand: what frame 0 cannot see.

    python bench/track_texture.py [--frames 7] [--degrees 180] [--size 64]

The rest hand, with a known gradient-and-stripes UV texture, turns about the
camera's vertical axis in ``--frames`` steps; each frame is rendered unlit and
observed on its true mesh (handfit.texture.track.frame_observation). Printed:
the mean absolute error, against the true texture, of frame 0's own texture
and of the track's (all frames accumulated), on the chart texels frame 0
cannot see but a later frame does, and on those frame 0 sees well; each with
the push-pull fill and with the learned texture prior as the fill of unseen texels.
"""

from __future__ import annotations

import argparse
import math

import _common  # noqa: F401 - the import path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=7)
    ap.add_argument("--degrees", type=float, default=180.0)
    ap.add_argument("--size", type=int, default=64, help="texture side")
    ap.add_argument("--image", type=int, default=160, help="image side")
    args = ap.parse_args()

    import torch

    from handfit import render as R
    from handfit.geometry import axis_angle_to_matrix
    from handfit.models import load_model
    from handfit.texture.prior import load_prior
    from handfit.texture.track import accumulate, fill_track, frame_observation
    from handfit.train.synth import facing_camera

    T, S = args.size, args.image
    model = load_model("anny")
    t = (torch.arange(T, dtype=torch.float32) + 0.5) / T
    v_, u_ = torch.meshgrid(t, t, indexing="ij")
    truth = torch.stack([0.15 + 0.7 * u_, 0.15 + 0.7 * v_, 0.5 + 0.35 * torch.sin(2 * math.pi * 3 * u_)], -1)
    with torch.no_grad():
        v = model(**model.zero_params(1)).vertices[0] @ facing_camera(model).float().T
        _, cov = R.bake_uv(v, model.faces, model.uv_coords.float(), model.uv_faces, T, backend="cpu")
    charts = cov[0, ..., 0] > 0
    v = v - v.mean(0)
    frames = []
    for i in range(args.frames):
        a = math.radians(args.degrees * i / max(args.frames - 1, 1))
        Ry = axis_angle_to_matrix(torch.tensor([0.0, a, 0.0], dtype=torch.float64)).float()
        frames.append(v @ Ry.T + torch.tensor([0.0, 0.0, 0.45]))
    verts = torch.stack(frames)
    K = torch.tensor([[380.0 * S / 160, 0, (S - 1) / 2], [0, 380.0 * S / 160, (S - 1) / 2], [0, 0, 1]])
    with torch.no_grad():
        g = R.rasterize_mesh(verts, model.faces, K[None].expand(len(verts), -1, -1), (S, S),
                             uv=model.uv_coords.float(), uv_faces=model.uv_faces, points=True, backend="cpu")
        img = R.shade(g, texture=truth[None], background=torch.full((len(verts), S, S, 3), 0.4),
                      antialias=False)["rgb"]
        colour, weight = frame_observation(img, g, size=T)
        acc = accumulate(colour, weight)
        hidden = charts & (weight[0, ..., 0] == 0) & (acc[1][..., 0] > 0)
        seen = weight[0, ..., 0] >= 1.0
        never = charts & (acc[1][..., 0] == 0)
        print(f"{args.frames} frames over {args.degrees:g} degrees, texture {T}², image {S}²: {int(charts.sum())} "
              f"chart texels, {int(hidden.sum())} unseen by frame 0 but seen later, {int(seen.sum())} seen well "
              f"by frame 0, {int(never.sum())} seen by no frame")
        print("| fill | texels | frame 0's texture | track texture |")
        print("|---|---|---|---|")
        prior = load_prior()
        for name, net in (("push-pull", None), ("learned prior", prior)):
            if name == "learned prior" and net is None:
                continue
            own, trk = fill_track(colour[0], weight[0], net), fill_track(*acc, net)
            for label, sel in (("unseen by frame 0", hidden), ("seen well by frame 0", seen)):
                e = lambda x: float((x[sel] - truth[sel]).abs().mean())  # noqa: E731
                print(f"| {name} | {label} | {e(own):.4f} | {e(trk):.4f} |")


if __name__ == "__main__":
    main()
