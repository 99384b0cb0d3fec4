"""CPU backend vs nvdiffrast on the same scenes (needs a CUDA GPU).

    .venv/bin/python bench/render_parity.py

Both backends run on the same CUDA tensors (ours moves only its visibility
pass to the CPU). Printed per scene: the share of pixels whose triangle id
agrees, the largest differences of barycentrics, z/w, texture and
antialiased colour on agreeing pixels, the share of pixels whose final
colour agrees within 1e-3, and the relative difference / cosine of the
gradients of an L2 loss w.r.t. vertex positions and texture.
tests/test_render_parity.py asserts on these numbers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tests/test_render_parity.py loads this file by path
import _common  # noqa: E402,F401 - the import path
from handfit import render as R  # noqa: E402
from handfit.train.shapes import ellipsoid


def mesh_scene(res: int, batch: int, device):
    """The ellipsoid hand stand-in, a different rotation per batch item."""
    v, f, uv, uvf = ellipsoid()
    verts = []
    for b in range(batch):
        a, c = 0.5 + 0.4 * b, 0.3 * b
        Rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        Rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
        verts.append(v @ (Rz @ Rx).T + torch.tensor([0.01 * b, -0.005, 0.35]))
    K = torch.tensor([[1.6 * res, 0.0, res / 2 - 0.5], [0.0, 1.6 * res, res / 2 - 0.5], [0.0, 0.0, 1.0]])
    pos = R.camera_to_clip(torch.stack(verts), K, (res, res))
    return pos.to(device), f.to(device).int(), uv.to(device), uvf.to(device).int()


def soup_scene(res: int, batch: int, device, seed: int = 0):
    """Random overlapping triangles, some crossing the near plane."""
    g = torch.Generator().manual_seed(seed)
    n = 80
    xy = (torch.rand(batch, n, 1, 2, generator=g) * 2 - 1) + (torch.rand(batch, n, 3, 2, generator=g) - 0.5) * 0.7
    w = 0.5 + 1.5 * torch.rand(batch, n, 3, 1, generator=g)
    zn = torch.rand(batch, n, 1, 1, generator=g) * 2.2 - 1.1 + (torch.rand(batch, n, 3, 1, generator=g) - 0.5) * 0.3
    pos = torch.cat([xy * w, zn * w, w], dim=-1).reshape(batch, n * 3, 4)
    tri = torch.arange(n * 3, dtype=torch.int32).view(n, 3)
    uv = torch.rand(n * 3, 2, generator=g)
    return pos.to(device), tri.to(device), uv.to(device), tri.to(device)


def run(backend, pos, tri, uv, uvf, tex, target, res):
    x = pos.clone().requires_grad_(True)
    t = tex.clone().requires_grad_(True)
    rast = R.rasterize(x, tri, (res, res), backend=backend)
    uv_img = R.interpolate(uv, rast, uvf, backend=backend)
    col = R.texture(t, uv_img, backend=backend)
    aa = R.antialias(col, rast, x, tri, backend=backend)
    ((aa - target) ** 2).sum().backward()
    return {"rast": rast.detach(), "col": col.detach(), "aa": aa.detach(), "g_pos": x.grad, "g_tex": t.grad}


def compare(pos, tri, uv, uvf, res, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    dev = pos.device
    tex = torch.rand(1, 64, 64, 3, generator=g).to(dev)
    target = torch.rand(pos.shape[0], res, res, 3, generator=g).to(dev)
    ours = run("cpu", pos, tri, uv, uvf, tex, target, res)
    ref = run("nvdiffrast", pos, tri, uv, uvf, tex, target, res)
    ids_o, ids_r = ours["rast"][..., 3], ref["rast"][..., 3]
    same = (ids_o == ids_r) & (ids_r > 0)
    diff = lambda key, sl=slice(None): (ours[key][..., sl] - ref[key][..., sl]).abs()[same].max().item()  # noqa: E731

    def rel(a, b):
        return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()

    def cos(a, b):
        return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()

    return {
        "covered": (ids_r > 0).float().mean().item(),
        "id_match": (ids_o == ids_r).float().mean().item(),
        "bary_max": diff("rast", slice(0, 2)),
        "depth_max": diff("rast", slice(2, 3)),
        "tex_max": diff("col"),
        "aa_max_same": diff("aa"),
        "aa_close": ((ours["aa"] - ref["aa"]).abs().amax(-1) < 1e-3).float().mean().item(),
        "g_pos_rel": rel(ours["g_pos"], ref["g_pos"]),
        "g_pos_cos": cos(ours["g_pos"], ref["g_pos"]),
        "g_tex_rel": rel(ours["g_tex"], ref["g_tex"]),
    }


def scenes(device):
    yield "ellipsoid 256^2 B=2", mesh_scene(256, 2, device), 256
    yield "ellipsoid 512^2 B=1", mesh_scene(512, 1, device), 512
    yield "triangle soup (near-plane crossings) 128^2 B=2", soup_scene(128, 2, device), 128


def main():
    if not torch.cuda.is_available():
        print("render_parity: no CUDA GPU; nothing to compare")
        return 0
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(dev)}")
    for name, (pos, tri, uv, uvf), res in scenes(dev):
        m = compare(pos, tri, uv, uvf, res)
        print(f"\n{name}")
        for k, v in m.items():
            print(f"  {k:<12} {v:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
