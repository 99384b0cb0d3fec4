"""Texture scores of another checkout's single-frame fits (the ``dense`` variant), measured
with this checkout's :mod:`handfit.eval.texture`, to compare textures across commits.

    python bench/research/texture_checkout.py ../shared/data/dev3d_seq --checkout /work/base
        --out /tmp/tex_base [--limit N] [--gap 4] [--set PATH=VALUE ...]

Step 1 runs in a subprocess on the other checkout (``PYTHONPATH=CHECKOUT``): its
``handfit eval --sequence`` single-frame path (detect, match, fit each frame alone with its K)
with a fitting function that keeps every fitted hand's mesh and texture in
``OUT/fits.npz``. Step 2, here, scores them as ``handfit eval --sequence`` scores its dense
variant and prints the texture table. ``--checkout .`` measures this checkout the same way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

DUMP = r"""
import sys, numpy as np, functools
from handfit.eval.datasets import read_runs
from handfit.eval.sequence import evaluate_sequences
from handfit.api import fit_batch, FitOptions
from handfit.fitting.resources import Resources
data, out, limit, sets = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
runs = read_runs(data)[:limit or None]
opts = FitOptions.from_values({"device": "cpu", **{k: v for k, v in (s.split("=", 1) for s in sets)}})
res = Resources()
kept = {}
def keep(images, detections=None, intrinsics=None, options=None, **kw):
    results = fit_batch(images, detections=detections, intrinsics=intrinsics, options=options, resources=res, **kw)
    for img, r in zip(images, results):
        key = img.path if hasattr(img, "path") else None
        for i, h in enumerate(r.hands):
            kept[f"{len(kept)}"] = dict(K=r.K, vertices=h.vertices, texture=h.texture, faces=h.faces,
                                        uv=h.uv_coords, uv_faces=h.uv_faces, det=h.keypoints_2d_detected,
                                        image=str(getattr(img, "path", "")))
    return results
ev = evaluate_sequences(runs, opts, ("dense",), fit_batch=keep, resources=res, progress=True, warmup=False,
                        **({"texture_gap": 0} if "texture_gap" in evaluate_sequences.__code__.co_varnames else {}))
flat = {}
for k, d in kept.items():
    for n, v in d.items():
        flat[f"{k}/{n}"] = np.asarray(v)
np.savez_compressed(out, **flat)
print(len(kept), "hands kept")
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--checkout", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--gap", type=int, default=4)
    C.add_set_option(ap)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    fits = args.out / "fits.npz"
    if not fits.exists():
        env = {**os.environ, "PYTHONPATH": str(args.checkout.resolve())}
        subprocess.run([sys.executable, "-c", DUMP, str(args.data.resolve()), str(fits), str(args.limit),
                        *args.set], check=True, env=env, cwd="/tmp")
    score(args.data, fits, args.gap, args.limit)
    return 0


def score(data: Path, fits: Path, gap: int, limit: int) -> None:
    """Score the kept fits per run, each frame's hand matched to its image."""
    from handfit.eval.datasets import read_runs
    from handfit.eval.report import texture_table
    from handfit.eval.sequence import frame_number, texture_summary
    from handfit.eval.texture import run_scores
    from handfit.io.image import load_image

    z = np.load(fits)
    hands: dict = {}
    for key in z.files:
        i, name = key.split("/")
        hands.setdefault(i, {})[name] = z[key]
    by_image: dict = {}
    for h in hands.values():
        by_image.setdefault(str(h["image"]), []).append(h)
    rows = []
    for _, frames in read_runs(data)[:limit or None]:
        chain = []
        for rec in frames:
            got = by_image.get(str(rec.image), [])
            if not got:
                chain.append(None)
                continue
            h = got[0]
            chain.append({"number": frame_number(rec), "photo": load_image(rec.image).rgb, "K": h["K"],
                          "vertices": h["vertices"], "faces": h["faces"], "uv": h["uv"], "uv_faces": h["uv_faces"],
                          "texture": h["texture"]})
        rows.extend(r for r, f in zip(run_scores(chain, gap), chain) if f is not None)
    print(texture_table({"dense": texture_summary(rows)}))


if __name__ == "__main__":
    raise SystemExit(main())
