"""Calibrate a model's keypoints to MediaPipe's landmark definitions.

A hand model's 21 keypoints are its own: Anny's are bone heads of a game rig
and fingertip vertices. MediaPipe (trained on human annotations) puts the
wrist and the knuckles elsewhere: on synthetic hands, where the mesh is known
exactly, its landmarks sit 8-9 px (about 4% of the hand box) from Anny's raw
keypoints, the wrist alone 19 px. Fitting raw keypoints to MediaPipe then
misplaces the mesh, and a dense stage that aligns the mesh to the photo moves
the keypoints away from where annotators put them.

This module renders random synthetic hands (:mod:`handfit.train.synth`), runs the
detector on them and solves for one offset per keypoint, in the right hand's
rest frame and attached to the keypoint's bone, that best explains the
detections (robust 2D reprojection error, every fourth scene held out):

    python -m handfit.train.calibrate --scenes 1200 --out handfit/weights/keypoints_anny.pt

The result ships in ``handfit/weights/`` and :class:`~handfit.models.anny.AnnyHand`
applies it by default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..io import jsonfile

FIRST_SEED = 100_000  # far from the seeds of the benchmarks and tests


def collect(scenes: int, first_seed: int = FIRST_SEED, progress: bool = True) -> list[dict]:
    """Render ``scenes`` random hands (alternating sides), detect them, and keep the
    detections that match the rendered hand. -> rows of params, K, detected (21,2), box."""
    from tqdm import tqdm

    from ..detect import Detector
    from ..models.anny import AnnyHand
    from .synth import make_scene

    models = {s: AnnyHand(s, keypoint_offsets=None) for s in ("right", "left")}
    rows = []
    with Detector(max_hands=1) as det:
        for seed in tqdm(range(first_seed, first_seed + scenes), desc="render+detect", disable=not progress):
            side = "right" if seed % 2 == 0 else "left"
            sc = make_scene(models[side], seed)
            found = det.detect(sc.image)
            if not found:
                continue
            box = float(np.ptp(sc.keypoints_2d, 0).max())
            err = float(np.linalg.norm(found[0].keypoints - sc.keypoints_2d, axis=-1).mean()) / box
            if err > 0.15:  # a wrong hand or a broken detection: not a definition offset
                continue
            rows.append({"seed": seed, "side": side, "params": {k: v.numpy() for k, v in sc.params.items()},
                         "K": sc.K, "detected": found[0].keypoints, "box": box})
    return rows


def _collect_chunk(args):
    first, n, progress = args
    torch.set_num_threads(1)
    return collect(n, first, progress)


def _jsonable(r: dict) -> dict:
    return {k: ({a: b.tolist() for a, b in v.items()} if k == "params" else
                v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}


def _load_rows(path: Path) -> list[dict]:
    rows = json.loads(path.read_text())
    for r in rows:
        r["params"] = {k: np.asarray(v, np.float32) for k, v in r["params"].items()}
        r["K"], r["detected"] = np.asarray(r["K"]), np.asarray(r["detected"])
    return rows


def _batch(rows, side, dtype=torch.float64):
    rs = [r for r in rows if r["side"] == side]
    if not rs:
        return None
    P = {k: torch.tensor(np.stack([r["params"][k] for r in rs]), dtype=dtype) for k in rs[0]["params"]}
    K = torch.tensor(np.stack([r["K"] for r in rs]), dtype=dtype)
    det = torch.tensor(np.stack([r["detected"] for r in rs]), dtype=dtype)
    box = torch.tensor([r["box"] for r in rs], dtype=dtype)
    return P, K, det, box


def residual_fn(rows, dtype=torch.float64):
    """-> (f, box): ``f(offsets (21,3)) -> (N,21)``, the 2D distance in hand-box
    units between the detections and the model's keypoints with those offsets,
    for the scenes' true parameters; box (N,1) the hand-box sides in pixels.
    Both ordered right hands first."""
    from ..camera import project
    from ..models.anny import AnnyHand

    parts = []
    for side in ("right", "left"):
        b = _batch(rows, side, dtype)
        if b is None:
            continue
        P, K, det, box = b
        model = AnnyHand(side, keypoint_offsets=torch.zeros(21, 3)).to(dtype)
        with torch.no_grad():  # zero offsets: rooted at the raw wrist, as the scenes were rendered
            v_raw = model(**P).vertices[:, :1]                            # (N,1,3)
        parts.append((model, P, K, det, box, v_raw))

    def f(offsets):
        out = []
        for model, P, K, det, box, v_raw in parts:
            model.keypoint_offsets = offsets
            o = model(**P)
            # The calibrated model roots at its own wrist: move it back onto the rendered mesh.
            uv = project(o.keypoints + (v_raw - o.vertices[:, :1]), K)    # (N,21,2)
            out.append((uv - det).norm(dim=-1) / box[:, None])
        return torch.cat(out)

    return f, torch.cat([p[4] for p in parts])[:, None]


def solve(rows, iters: int = 500, sigma: float = 0.05, l2: float = 1e-2, lr: float = 5e-4) -> torch.Tensor:
    """Offsets (21,3) metres minimising a Geman-McClure (scale ``sigma`` box sides)
    of the residuals, with a small pull towards zero (``l2`` per cm²)."""
    f, _ = residual_fn(rows)
    offsets = torch.zeros(21, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([offsets], lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        r = f(offsets)
        loss = (r.square() / (r.square() + sigma**2)).mean() + l2 * (offsets * 100).square().mean()
        loss.backward()
        opt.step()
    return offsets.detach()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=1200)
    ap.add_argument("--first-seed", type=int, default=FIRST_SEED)
    ap.add_argument("--workers", type=int, default=2, help="processes rendering and detecting")
    ap.add_argument("--detections", type=Path,
                    help="JSON file of the collected detections: read if it exists, else written")
    ap.add_argument("--out", type=Path, default=Path("handfit/weights/keypoints_anny.pt"))
    args = ap.parse_args(argv)
    t0 = time.time()
    if args.detections and args.detections.is_file():
        rows = _load_rows(args.detections)
    elif args.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        chunks = np.array_split(np.arange(args.first_seed, args.first_seed + args.scenes), args.workers)
        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as ex:
            parts = ex.map(_collect_chunk, [(int(c[0]), len(c), i == 0) for i, c in enumerate(chunks)])
            rows = [r for part in parts for r in part]
    else:
        rows = collect(args.scenes, args.first_seed)
    if args.detections and not args.detections.is_file():
        args.detections.write_text(jsonfile.dumps([_jsonable(r) for r in rows]))
    train = [r for r in rows if r["seed"] % 4 != 0]
    held = [r for r in rows if r["seed"] % 4 == 0]
    offsets = solve(train)
    report = {}
    with torch.no_grad():
        zero = torch.zeros(21, 3, dtype=torch.float64)
        for name, rs in (("train", train), ("held_out", held)):
            f, box = residual_fn(rs)
            r0, r1 = f(zero), f(offsets)
            report[name] = {"hands": len(rs), "px_before": float((r0 * box).mean()), "px_after": float((r1 * box).mean()),
                            "box_before": float(r0.mean()), "box_after": float(r1.mean())}
            print(f"{name:8s} {len(rs):4d} hands: detection vs model keypoints {report[name]['px_before']:.2f} px -> "
                  f"{report[name]['px_after']:.2f} px ({report[name]['box_before']:.4f} -> "
                  f"{report[name]['box_after']:.4f} box sides)", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"offsets": offsets.float(), "scenes": args.scenes, "first_seed": args.first_seed,
                "report": report}, args.out)
    print(f"wrote {args.out} ({len(rows)} of {args.scenes} scenes detected, {time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
