"""Harder two-hand dev clips for the video tracker (issue 30), their ground truth, and a scorer.

Every clip is built from the asl clip beside its own mirror image,
``np.hstack([f, f[:, ::-1]])`` (first ``--end`` frames, default 150): hand 0 is
the clip's right hand (left half), hand 1 the mirrored one, a left hand (right half).

* ``mirror``: the composite as is (1240x1080).
* ``cross``: a canvas 1.5 halves wide; the left half slides right and the right half
  left and back (one cosine period over the clip), so the hands cross twice. Where
  the halves overlap, the top half is drawn through a soft mask around its hand
  only, so the hand underneath is partly hidden (hand 0 on top in the first
  half of the clip, hand 1 in the second).
* ``small``: the composite scaled to 320 px wide.
* ``blur``: motion blur, a line kernel 9-21 px long at a varying angle, on 3 of 4 frames.
* ``leave``: the right half (hand 1) slides out of the frame (frames 60-66), stays
  out 20 frames, and slides back (86-92); black where it left.
* ``wrongside``: hand 0's crop (a square around its box) squeezed to 0.4 of its width
  in place on the even frames from 20 on. MediaPipe's handedness resists most
  transforms (``probe``: turns by 90 or 180 degrees, grey, inversion flip nothing;
  a vertical flip does, but the image then really shows a left hand); a squeeze
  flips it on about 40% of frames. The frames where the detector (``Detector().detect``,
  as ``handfit batch`` runs it) says the wrong side, for either hand, are found on
  the encoded clip and recorded as ``wrong_side`` in its json (with ``missed``).
* ``hard``: cross + leave + blur, then scaled to 320 px wide.

Ground truth (``OUTDIR/<name>.json``): per frame and hand, ``visible`` and ``box``
(x1, y1, x2, y2 in the clip's pixels), from the source frames' detections
(cached in ``OUTDIR/source_dets.npz``) mapped through the clip's transform. A hand is
visible when at least half its box is inside the frame and at most half of it is
under the other hand's mask.

Run (from the repo root, OMP_NUM_THREADS=1 is set for the batch runs)::

    python bench/research/hard_clips.py make OUTDIR [--end 150]      # clips, json, contact sheets
    python bench/research/hard_clips.py probe OUTDIR                 # which transforms flip MediaPipe's side
    python bench/research/hard_clips.py score CLIP.mp4 OUT/<clip>    # one `handfit batch` output
    python bench/research/hard_clips.py run OUTDIR --out RESULTS [--checkout PATH] [--every 1]
        [--clips mirror,cross] [-- extra handfit batch args]        # batch + score every clip, markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

SOURCE = "/work/shared/data/dev/tfjs_models/asl_hand.25fps.mp4"
NAMES = ["mirror", "cross", "small", "blur", "leave", "wrongside", "hard"]
SIDES = ["right", "left"]          # true side of hand 0 and hand 1
LEAVE = (60, 66, 86, 92)           # slide out from, out at, slide back from, back at
FPS = Fraction(25)


def load_source(end: int) -> list:
    from handfit.io.media import read_frames
    return [f for _, _, f in read_frames(SOURCE, 1, 0, end)]


def source_boxes(frames: list, outdir: Path) -> np.ndarray:
    """(N,4) box of the one hand per source frame (cached); frames the detector missed are interpolated."""
    cache = outdir / "source_dets.npz"
    if cache.exists() and len(np.load(cache)["boxes"]) == len(frames):
        return np.load(cache)["boxes"]
    from handfit.detect import Detector
    det = Detector()
    boxes, kps, found = np.full((len(frames), 4), np.nan), np.full((len(frames), 21, 2), np.nan), []
    for i, f in enumerate(frames):
        d = det.detect(f)
        if d:
            boxes[i], kps[i] = d[0].box_xyxy, d[0].keypoints
            found.append(i)
    for k in range(4):  # fill misses from the neighbours
        boxes[:, k] = np.interp(np.arange(len(frames)), found, boxes[found, k])
    np.savez_compressed(cache, boxes=boxes, keypoints=kps, found=np.isin(np.arange(len(frames)), found))
    return boxes


def soft_mask(shape, box, grow=0.15, feather=25) -> np.ndarray:
    """(H,W) float mask in [0,1]: an ellipse around box grown by `grow`, edges blurred by `feather` px."""
    m = np.zeros(shape, np.float32)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    ax, ay = (box[2] - box[0]) * (0.5 + grow) * 1.2, (box[3] - box[1]) * (0.5 + grow) * 1.2
    cv2.ellipse(m, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(m, (0, 0), feather)


def compose(halves, boxes, offsets, width, top):
    """Place two halves (H,w,3) at x offsets on a black canvas (H,width,3).

    boxes: per half its hand box in the half's pixels; top: which half is drawn over
    the other, through a soft mask around its hand where they overlap.
    -> (canvas, boxes (2,4) in canvas pixels, occluded fraction per hand (2,))"""
    H, w = halves[0].shape[:2]
    placed = []
    for h in (1 - top, top):
        layer = np.zeros((H, width, 3), np.float32)
        cover = np.zeros((H, width), np.float32)
        x0, x1 = max(0, offsets[h]), min(width, offsets[h] + w)
        if x1 > x0:
            layer[:, x0:x1] = halves[h][:, x0 - offsets[h]:x1 - offsets[h]]
            cover[:, x0:x1] = 1
        placed.append((layer, cover))
    (under, ucov), (over, ocov) = placed
    out_boxes = np.array([b + [offsets[h], 0, offsets[h], 0] for h, b in enumerate(boxes)], np.float64)
    mask = np.where(ucov > 0, soft_mask((H, width), out_boxes[top]), 1.0) * ocov
    canvas = under * (1 - mask[..., None]) + over * mask[..., None]
    occluded = np.zeros(2)
    x1, y1, x2, y2 = np.clip(out_boxes[1 - top], 0, [width, H, width, H]).astype(int)
    if x2 > x1 and y2 > y1:
        occluded[1 - top] = float((mask[y1:y2, x1:x2] > 0.5).mean()) * (x2 - x1) * (y2 - y1) / box_area(out_boxes[1 - top])
    return canvas.astype(np.uint8), out_boxes, occluded


def box_area(b) -> float:
    return max(1e-6, (b[2] - b[0]) * (b[3] - b[1]))


def inside_fraction(b, W, H) -> float:
    c = np.clip(b, 0, [W, H, W, H])
    return max(0.0, c[2] - c[0]) * max(0.0, c[3] - c[1]) / box_area(b)


def leave_dx(t: int, w: int) -> int:
    a, b, c, d = LEAVE
    s = np.interp(t, [a, b, c, d], [0, 1, 1, 0])
    return int(round(s * (w + 40)))


def motion_blur(img, t: int):
    """Line kernel 9-21 px long, angle turning with t; frames t % 4 == 3 stay sharp."""
    if t % 4 == 3:
        return img
    n = 9 + 2 * (t * 5 % 7)
    k = np.zeros((n, n), np.float32)
    ang = np.deg2rad(t * 37 % 180)
    c = (n - 1) / 2
    p = (int(round(c - c * np.cos(ang))), int(round(c - c * np.sin(ang))))
    q = (int(round(c + c * np.cos(ang))), int(round(c + c * np.sin(ang))))
    cv2.line(k, p, q, 1.0, 1)
    return cv2.filter2D(img, -1, k / k.sum())


def turn_hand(img, box, how="squeeze"):
    """The square around box squeezed to 0.4 of its width (or turned, inverted, ...) in place; its centre stays put."""
    img = img.copy()
    H, W = img.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    r = int(max(box[2] - box[0], box[3] - box[1]) / 2)
    x0, y0 = int(max(0, cx - r)), int(max(0, cy - r))
    x1, y1 = int(min(W, x0 + 2 * r)), int(min(H, y0 + 2 * r))
    x0, y0 = x1 - min(x1 - x0, y1 - y0), y1 - min(x1 - x0, y1 - y0)
    crop = img[y0:y1, x0:x1]
    if how == "squeeze":  # 0.4 as wide, centred, on the background colour of the crop's left edge
        small = cv2.resize(crop, (int(0.4 * crop.shape[1]), crop.shape[0]), interpolation=cv2.INTER_AREA)
        img[y0:y1, x0:x1] = np.median(crop[:, :4], axis=(0, 1))
        ox = x0 + (crop.shape[1] - small.shape[1]) // 2
        img[y0:y1, ox:ox + small.shape[1]] = small
    elif how in ("rot90", "rot180"):
        img[y0:y1, x0:x1] = np.rot90(crop, 1 if how == "rot90" else 2)
    elif how == "invert":
        img[y0:y1, x0:x1] = 255 - crop
    elif how == "grey":
        img[y0:y1, x0:x1] = crop.mean(axis=2, keepdims=True).astype(np.uint8)
    elif how == "vflip":  # a mirror: the image then really shows the other side
        img[y0:y1, x0:x1] = crop[::-1]
    return img


def wrongside_frames(end: int) -> list:
    return [t for t in range(20, end) if t % 2 == 0]


def build(name: str, frames: list, boxes: np.ndarray):
    """Yield (rgb (H,W,3) uint8, boxes (2,4), visible (2,) bool) per frame of clip `name`."""
    w, n = frames[0].shape[1], len(frames)
    turned = set(wrongside_frames(n))
    for t, f in enumerate(frames):
        b0 = boxes[t].copy()
        b1 = np.array([w - 1 - b0[2], b0[1], w - 1 - b0[0], b0[3]])
        if name == "wrongside" and t in turned:
            f = turn_hand(f, b0)
        halves = [f, f[:, ::-1]]
        if name in ("cross", "hard"):
            s = (1 - np.cos(2 * np.pi * t / n)) / 2
            width = int(1.5 * w)
            offsets = [int(round(s * (width - w))), int(round((1 - s) * (width - w)))]
            top = 0 if t < n / 2 else 1
        else:
            width, offsets, top = 2 * w, [0, w], 0
        if name in ("leave", "hard"):
            offsets[1] += leave_dx(t, w)
        img, out_boxes, occluded = compose(halves, [b0, b1], offsets, width, top)
        if name in ("blur", "hard"):
            img = motion_blur(img, t)
        if name in ("small", "hard"):
            scale = 320 / img.shape[1]
            img = cv2.resize(img, (320, int(round(img.shape[0] * scale))), interpolation=cv2.INTER_AREA)
            out_boxes = out_boxes * scale
        Hc, Wc = img.shape[:2]
        visible = np.array([inside_fraction(out_boxes[h], Wc, Hc) >= 0.5 and occluded[h] <= 0.5 for h in range(2)])
        yield img, out_boxes, visible


def detected_sides(det, rgb, boxes) -> list:
    """Per true hand, the side of the detection whose keypoints' centre is in its box (None: not found)."""
    out = [None, None]
    for d in det.detect(rgb):
        h = assign(d.keypoints.mean(0), boxes)
        if h is not None and out[h] is None:
            out[h] = d.side
    return out


def make(outdir: Path, end: int):
    from handfit.batch.video import write_mp4
    from handfit.io.media import read_frames
    outdir.mkdir(parents=True, exist_ok=True)
    frames = load_source(end)
    boxes = source_boxes(frames, outdir)
    for name in NAMES:
        truth = []

        def images():
            for img, b, v in build(name, frames, boxes):
                truth.append({"boxes": np.round(b, 1).tolist(), "visible": v.tolist()})
                yield img
        write_mp4(outdir / f"{name}.mp4", images(), FPS)
        info = {"clip": name, "sides": SIDES, "frames": truth}
        if name == "wrongside":  # what the detector says on the encoded frames
            from handfit.detect import Detector
            det = Detector()
            said = [detected_sides(det, rgb, np.array(truth[i]["boxes"]))
                    for i, _, rgb in read_frames(outdir / f"{name}.mp4", 1, 0, end)]
            info["turned"] = wrongside_frames(len(frames))
            info["detected_side"] = said
            info["wrong_side"] = [[t for t, s in enumerate(said) if s[h] not in (None, SIDES[h])] for h in range(2)]
            info["missed"] = [[t for t, s in enumerate(said) if s[h] is None] for h in range(2)]
            print("wrongside: wrong side on frames", info["wrong_side"], "missed", info["missed"])
        (outdir / f"{name}.json").write_text(json.dumps(info))
        contact_sheet(outdir / f"{name}.mp4", info, outdir / f"{name}_sheet.png")
        print(name, "written", flush=True)


def contact_sheet(clip: Path, info: dict, png: Path, count: int = 6):
    """count frames of the clip side by side with their true boxes (green hand 0, blue hand 1; thin: not visible)."""
    from handfit.io.media import read_frames
    n = len(info["frames"])
    pick = set(np.linspace(0, n - 1, count).astype(int).tolist())
    if info["clip"] in ("cross", "leave", "hard"):
        pick = {0, 30, 40, 70, 110, 115} if n >= 150 else pick
    if info["clip"] == "wrongside":  # the squeezed (even) frames the detector gets wrong
        pick = set(info["wrong_side"][0][:3] + info["wrong_side"][0][-2:] + [0])
    tiles = []
    for i, _, rgb in read_frames(clip, 1, 0, n):
        if i not in pick:
            continue
        img = np.ascontiguousarray(rgb[:, :, ::-1])
        for h, colour in enumerate([(0, 200, 0), (255, 80, 0)]):
            b = np.array(info["frames"][i]["boxes"][h]).astype(int)
            cv2.rectangle(img, tuple(b[:2]), tuple(b[2:]), colour, 3 if info["frames"][i]["visible"][h] else 1)
        scale = 240 / img.shape[0]
        img = cv2.resize(img, (int(img.shape[1] * scale), 240))
        cv2.putText(img, str(i), (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2)
        tiles.append(img)
    cv2.imwrite(str(png), np.hstack(tiles))


def probe(outdir: Path, end: int):
    """How often MediaPipe's side flips for hand 0 under each in-place transform of its crop."""
    from handfit.detect import Detector
    outdir.mkdir(parents=True, exist_ok=True)
    det = Detector()
    frames = load_source(end)
    boxes = source_boxes(frames, outdir)
    for how in ("none", "rot90", "rot180", "invert", "grey", "vflip", "squeeze"):
        wrong = missed = 0
        for t in range(0, len(frames), 5):
            f = frames[t] if how == "none" else turn_hand(frames[t], boxes[t], how)
            said = detected_sides(det, f, boxes[t][None])[0]
            wrong += said not in (None, "right")
            missed += said is None
        print(f"{how}: wrong side {wrong}, missed {missed} of {len(range(0, len(frames), 5))}", flush=True)


def assign(centre, boxes):
    """Index of the box holding centre (the nearest such), else the nearest within one box size, else None."""
    best, best_d = None, np.inf
    for h, b in enumerate(boxes):
        c = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
        d = np.linalg.norm(centre - c)
        inside = b[0] <= centre[0] <= b[2] and b[1] <= centre[1] <= b[3]
        if (inside or d < max(b[2] - b[0], b[3] - b[1])) and d - 1e6 * inside < best_d:
            best, best_d = h, d - 1e6 * inside
    return best


def score(clip: Path, folder: Path, quiet: bool = False) -> dict:
    """Per true hand: tracks on it, its main track's coverage of its visible chosen frames, the missing frames."""
    info = json.loads(clip.with_suffix(".json").read_text())
    if not (folder / "tracks.npz").exists():
        folder = folder / clip.stem
    z = np.load(folder / "tracks.npz")
    chosen = set(z["frame_index"].tolist())
    truth = info["frames"]
    on = {}  # (track, hand) -> frames
    tracks, spurious, switched = int(z["num_tracks"]), 0, 0
    for t in range(tracks):
        hands = []
        for f, kp in zip(z[f"track{t}_frames"], z[f"track{t}_keypoints_2d_detected"]):
            h = assign(kp.mean(0), np.array(truth[f]["boxes"]))
            hands.append(h)
            if h is not None:
                on.setdefault((t, h), set()).add(int(f))
        counts = [hands.count(0), hands.count(1), hands.count(None)]
        if counts[2] > max(counts[:2]):
            spurious += 1
        switched += len(hands) - max(counts)
    per_hand = []
    for h in range(2):
        vis = {f for f in chosen if f < len(truth) and truth[f]["visible"][h]}
        mine = {t: fs & vis for (t, hh), fs in on.items() if hh == h}
        main = max(mine, key=lambda t: len(mine[t]), default=None)
        covered = set().union(*mine.values()) if mine else set()
        per_hand.append({"visible": len(vis), "tracks": sum(1 for fs in mine.values() if fs),
                         "main": main, "main_side": None if main is None else str(z[f"track{main}_side"]),
                         "coverage": len(mine[main]) / max(1, len(vis)) if main is not None else 0.0,
                         "missing": sorted(vis - covered)})
    out = {"clip": clip.stem, "tracks": tracks, "spurious": spurious, "switched_frames": switched, "hands": per_hand}
    if not quiet:
        print(json.dumps({**out, "hands": [{**p, "missing": ranges(p["missing"])} for p in per_hand]}, indent=1))
    return out


def ranges(frames: list) -> str:
    """[1,2,3,7] -> '1-3,7'"""
    out, start = [], None
    for i, f in enumerate(frames):
        if start is None:
            start = f
        if i + 1 == len(frames) or frames[i + 1] != f + 1:
            out.append(str(start) if start == f else f"{start}-{f}")
            start = None
    return ",".join(out)


def run(outdir: Path, results: Path, checkout: str | None, every: int, clips: list, extra: list):
    results.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if checkout:
        env["PYTHONPATH"] = str(Path(checkout).resolve())
    rows = ["| clip | tracks | spurious | switched frames | hand 0 (R): tracks, coverage | hand 1 (L): tracks, coverage "
            "| missing frames (0; 1) | seconds |", "|---" * 8 + "|"]
    scores = []
    for name in clips:
        clip = (outdir / f"{name}.mp4").resolve()
        t0 = time.time()
        cmd = [sys.executable, "-m", "handfit", "batch", str(clip), "--every", str(every), "--no-dense", "-q",
               "--overwrite", "-o", str(results.resolve()), *extra]
        # cwd away from any checkout, so that PYTHONPATH (or the installed package) decides which handfit runs
        p = subprocess.run(cmd, env=env, cwd=checkout or str(results.resolve()), capture_output=True, text=True)
        sec = time.time() - t0
        (results / f"{name}.log").write_text(p.stdout + p.stderr)
        try:
            s = score(clip, results / name, quiet=True)
        except FileNotFoundError:
            rows.append(f"| {name} | failed (rc {p.returncode}) |  |  |  |  |  | {sec:.0f} |")
            continue
        s["seconds"] = sec
        scores.append(s)
        hs = s["hands"]
        rows.append(f"| {name} | {s['tracks']} | {s['spurious']} | {s['switched_frames']} | "
                    + " | ".join(f"{p['tracks']}, {100 * p['coverage']:.0f}% of {p['visible']}" for p in hs)
                    + f" | {len(hs[0]['missing'])}; {len(hs[1]['missing'])} | {sec:.0f} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    (results / "table.md").write_text(table + "\n")
    (results / "scores.json").write_text(json.dumps(scores, indent=1))
    print(table)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ps = {c: sub.add_parser(c) for c in ("make", "probe", "score", "run")}
    for c in ("make", "probe", "run"):
        ps[c].add_argument("outdir", type=Path)
    for c in ("make", "probe"):
        ps[c].add_argument("--end", type=int, default=150)
    ps["score"].add_argument("clip", type=Path)
    ps["score"].add_argument("folder", type=Path)
    ps["run"].add_argument("--out", type=Path, required=True)
    ps["run"].add_argument("--checkout")
    ps["run"].add_argument("--every", type=int, default=1)
    ps["run"].add_argument("--clips", default=",".join(NAMES))
    a = ap.parse_args(argv)
    if a.cmd == "make":
        make(a.outdir, a.end)
    elif a.cmd == "probe":
        probe(a.outdir, a.end)
    elif a.cmd == "score":
        score(a.clip, a.folder)
    else:
        run(a.outdir, a.out, a.checkout, a.every, a.clips.split(","), extra)


if __name__ == "__main__":
    main()
