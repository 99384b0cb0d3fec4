"""Render benchmark: ms per forward and per forward+backward step.

    .venv/bin/python bench/render.py            # full table (a few minutes on 2 cores)
    .venv/bin/python bench/render.py --quick    # 256^2, batch 1 only

One step = camera_to_clip + rasterize + interpolate UV + texture (256^2) +
antialias + L2 against a target (+ backward to vertices and texture). The
mesh is the default hand (Anny) when ``handfit.models.load_model`` can build
it, else a procedural ellipsoid of the same size (1,602 vertices, 3,200
triangles). Times are medians over repeated runs after a warm-up; the machine
may be shared, so look at the spread column too.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import time

import torch

import _common as C
from handfit import render as R
from handfit.train.shapes import ellipsoid


def hand_mesh():
    """(vertices (V,3) metres, faces (F,3), uv_coords (T,2), uv_faces (F,3), name)."""
    try:
        from handfit.models import load_model

        model = load_model("anny")
        p = model.zero_params(1)
        with torch.no_grad():
            v = model(**p).vertices[0]
        return (v.float(), model.faces.long(), model.uv_coords.float(), model.uv_faces.long(),
                f"anny ({v.shape[0]} vertices, {model.faces.shape[0]} triangles)")
    except Exception as exc:  # the model may not exist yet, or its data may be missing
        v, f, uv, uvf = ellipsoid()
        return v, f, uv, uvf, (f"procedural ellipsoid ({v.shape[0]} vertices, {f.shape[0]} triangles); "
                               f"anny unavailable: {type(exc).__name__}: {str(exc)[:80]}")


def place(v: torch.Tensor, res: int, batch: int):
    """Centre the mesh 0.5 m in front of the camera, its longest side filling ~80% of the frame;
    each batch item gets its own small rotation (different geometry)."""
    v = v - (v.amax(0) + v.amin(0)) / 2  # bounding-box centre at the origin
    z = 0.5
    extent = v[:, :2].abs().max().item()
    f = 0.4 * res * z / extent
    K = torch.tensor([[f, 0.0, (res - 1) / 2], [0.0, f, (res - 1) / 2], [0.0, 0.0, 1.0]])
    out = []
    for b in range(batch):
        a = 0.3 * math.sin(b)
        Ry = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        out.append(v @ Ry.T + torch.tensor([0.0, 0.0, z]))
    return torch.stack(out), K.expand(batch, 3, 3)


def step(verts, faces, K, res, uv, uvf, tex, target, backend, backward):
    pos = R.camera_to_clip(verts, K, (res, res))
    rast = R.rasterize(pos, faces, (res, res), backend=backend)
    uv_img = R.interpolate(uv, rast, uvf, backend=backend)
    col = R.texture(tex, uv_img, backend=backend)
    col = R.antialias(col, rast, pos, faces, backend=backend)
    loss = ((col - target) ** 2).mean()
    if backward:
        loss.backward()
    return loss


def timed(fn, reps: int, sync):
    fn()  # warm-up (JIT, caches)
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(1000.0 * (time.perf_counter() - t))
    return statistics.median(times), min(times), max(times)


def load_reference():
    """naive_rasterize from tests/test_render_reference.py (kept out of the package)."""
    spec = importlib.util.spec_from_file_location("render_reference", C.REPO / "tests" / "test_render_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.naive_rasterize


def reference_comparison(reps: int):
    naive = load_reference()
    v, f, _, _ = ellipsoid(rings=11, segments=10)  # 92 vertices, 200 triangles
    verts, K = place(v, 64, 1)
    attr = torch.rand(1, v.shape[0], 3)

    def run(rasterize):
        x = verts.clone().requires_grad_(True)
        pos = R.camera_to_clip(x, K, (64, 64))
        rast = rasterize(pos)
        R.interpolate(attr, rast, f, backend="cpu").square().mean().backward()

    ours = timed(lambda: run(lambda p: R.rasterize(p, f, (64, 64), backend="cpu")), reps, lambda: None)
    ref = timed(lambda: run(lambda p: naive(p, f, (64, 64))), max(3, reps // 3), lambda: None)
    print(f"\nSmall case, 64x64, {f.shape[0]} triangles, rasterize+interpolate, forward+backward:")
    print(f"  naive pixels x faces torch : {ref[0]:8.2f} ms")
    print(f"  ours (cpu backend)         : {ours[0]:8.2f} ms   speed-up x{ref[0] / ours[0]:.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256^2, batch 1 only")
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()

    v, f, uv, uvf, name = hand_mesh()
    print(f"mesh: {name}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; texture 256x256x3")
    backends = ["cpu"] + (["nvdiffrast"] if torch.cuda.is_available() else [])
    sizes = [(256, 1)] if args.quick else [(256, 1), (256, 16), (512, 1), (512, 16)]
    print(f"\n{'backend':<11}{'res':>5}{'B':>4}{'forward ms':>12}{'fwd+bwd ms':>12}   fwd+bwd min..max")
    for backend in backends:
        dev = torch.device("cuda" if backend == "nvdiffrast" else "cpu")
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        for res, batch in sizes:
            reps = args.reps if res * res * batch <= 256 * 256 * 4 else max(3, args.reps // 3)
            verts, K = place(v, res, batch)
            verts, K = verts.to(dev), K.to(dev)
            tex = torch.rand(1, 256, 256, 3, device=dev).expand(batch, -1, -1, -1).contiguous()
            target = torch.rand(batch, res, res, 3, device=dev)
            fi, uvd, uvfd = f.to(dev).int(), uv.to(dev), uvf.to(dev).int()

            def fwd():
                x = verts.clone().requires_grad_(True)
                step(x, fi, K, res, uvd, uvfd, tex.clone().requires_grad_(True), target, backend, False)

            def fwdbwd():
                x = verts.clone().requires_grad_(True)
                step(x, fi, K, res, uvd, uvfd, tex.clone().requires_grad_(True), target, backend, True)

            tf = timed(fwd, reps, sync)
            tb = timed(fwdbwd, reps, sync)
            print(f"{backend:<11}{res:>5}{batch:>4}{tf[0]:>12.1f}{tb[0]:>12.1f}   {tb[1]:.1f}..{tb[2]:.1f}")
    reference_comparison(args.reps)


if __name__ == "__main__":
    main()
