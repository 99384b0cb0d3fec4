"""Texture scores of ``handfit eval --sequence`` drawn, a strip per run, worst runs first.

    python bench/texture_strips.py ../shared/data/dev3d_seq --out /tmp/strips [--limit 4] [--gap 4]
        [--variants dense,sequence_dense] [--set PATH=VALUE ...]

Fits the runs as ``handfit eval DATA --sequence`` does (the variants that make textures) and, per
run and variant, draws the pair whose texture does worst on the other frame: the target photo;
the seen render (its own texture on its mesh); the novel render (the source frame's texture on
it; a track's: its texture built without the frame, leave-one-out); the flat render (the
texture's median colour). Each render is the albedo with the score's per-channel gain applied,
and its score is printed on it (``handfit.eval.texture``; lower is better). Writes
``OUT/<run>_<variant>.png`` and ``OUT/worst_<variant>.png`` (the three worst runs' strips
stacked), and prints each run's scores, worst first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import _common as C


def _panel(img: np.ndarray, text: str, side: int = 160) -> np.ndarray:
    """(h,w,3) float [0,1] -> (side,side,3) uint8 with ``text`` written at the top."""
    import cv2

    h, w = img.shape[:2]
    s = side / max(h, w)
    small = cv2.resize((img.clip(0, 1) * 255).astype(np.uint8), (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    out = np.full((side, side, 3), 255, np.uint8)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def strip(target: dict, textures: list, names: list, erode_px: int = 4) -> tuple[np.ndarray, list]:
    """The target frame's photo and each texture rendered on its mesh, with its score.
    -> ((side, side*(1+N), 3) uint8, scores)"""
    import torch

    from handfit.eval.texture import gain_errors, render_albedo

    r = render_albedo(target["photo"], target["K"], target["vertices"], target["faces"], target["uv"],
                      target["uv_faces"], textures, erode_px)
    if r is None:
        return None, []
    photo, mask = r["photo"][0], r["mask"][0]
    m = mask[..., None].float()
    panels, scores = [_panel(photo.numpy(), "photo")], []
    for alb, name in zip(r["albedo"], names):
        gain = (alb * photo * m).sum((0, 1)) / (alb * alb * m).sum((0, 1)).clamp(min=1e-12)
        score = float(gain_errors(alb[None], photo[None], mask[None])[0])
        shown = torch.where(mask[..., None], alb * gain, photo * 0.35)      # outside the scored pixels: dimmed
        panels.append(_panel(shown.numpy(), f"{name} {score:.3f}"))
        scores.append(score)
    return np.concatenate(panels, 1), scores


def draw(frames: list, rows: list, variant: str) -> tuple[np.ndarray | None, float]:
    """The strip of one run's worst pair for a variant -> (image, its novel (or loo) score).
    dense: the frame whose texture does worst on one of its targets, on that target; a track:
    the frame its leave-one-out texture does worst on."""
    from handfit.eval.texture import median_colour

    by_number = {f["number"]: f for f in frames if f is not None}
    worst = None   # (score, target frame, the texture scored on it)
    for f, r in zip(frames, rows):
        if f is None:
            continue
        if variant == "dense":
            pairs = [(s, by_number[n], f["texture"]) for (s, _), n in zip(r["pairs"], r["targets"])]
        else:
            pairs = [(r["tex_loo"], f, f["loo"])] if np.isfinite(r["tex_loo"]) else []
        for p in pairs:
            if worst is None or p[0] > worst[0]:
                worst = p
    if worst is None:
        return None, float("nan")
    _, target, other = worst
    flat = np.broadcast_to((median_colour(other, target["uv"], target["uv_faces"]) * 255).astype(np.uint8),
                           other.shape).copy()
    img, scores = strip(target, [target["texture"], other, flat],
                        ["seen", "novel" if variant == "dense" else "leave-one-out", "flat"])
    return img, scores[1] if scores else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="runs in the dev3d_seq layout")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None, help="the first N runs")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--gap", type=int, default=4, help="source frames between a texture's frame and its target")
    ap.add_argument("--variants", default="dense,sequence_dense")
    C.add_set_option(ap)
    args = ap.parse_args(argv)

    import cv2

    from handfit.eval.datasets import read_runs
    from handfit.eval.report import texture_table
    from handfit.eval.sequence import evaluate_sequences

    args.out.mkdir(parents=True, exist_ok=True)
    runs = read_runs(args.data, every=args.every)[:args.limit]
    drawn: dict = {}   # variant -> [(score, run, image)]

    def on_textures(run, variant, frames, rows):
        img, score = draw(frames, rows, variant)
        if img is None:
            return
        name = run.replace("/", "_")
        cv2.imwrite(str(args.out / f"{name}_{variant}.png"), img[..., ::-1])
        drawn.setdefault(variant, []).append((score, run, img))

    ev = evaluate_sequences(runs, C.fit_options(args.set, {"device": "cpu"}), tuple(args.variants.split(",")),
                            texture_gap=args.gap, on_textures=on_textures, progress=True)
    print(texture_table(ev.summary))
    for variant, got in drawn.items():
        got.sort(key=lambda g: -g[0] if np.isfinite(g[0]) else np.inf)
        print(f"\n{variant}: the worst pair per run, worst first")
        for score, run, _ in got:
            print(f"  {run}: {score:.4f}")
        cv2.imwrite(str(args.out / f"worst_{variant}.png"), np.concatenate([g[2] for g in got[:3]], 0)[..., ::-1])
    print(f"strips in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
