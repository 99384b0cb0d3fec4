"""Detection recall, false positives and time, per mode and per pass.

Recall is counted over every labelled hand of $HANDFIT_DATA/dev (freihand,
onehand10k, panoptic, tfjs_models) and $HANDFIT_DATA/dev3d. A labelled hand
counts as found when some detection's mean distance to its *visible*
labelled keypoints is under 0.25 x the diagonal of the labelled box
(``bbox_xywh``; the visible keypoints' box where there is none). False
positives: every detection on $HANDFIT_DATA/dev/negatives (photos with no
hand). Time: wall-clock milliseconds per photo of ``Detector.detect``.

Rows: the two modes (``fast``: the full-image pass alone; ``thorough``: the
whole cascade), then each pass of the cascade run alone (``pass:tiles`` is
the tiles without the full-image pass).

    python bench/detect.py                       # everything
    python bench/detect.py --sets dev,negatives  # skip dev3d
    python bench/detect.py --rows fast,thorough  # modes only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import _common as C

FOUND = 0.25


def labelled(root: Path, which: str):
    """(image path, [labelled hands]) of the set ``dev`` or ``dev3d``."""
    if which == "dev":
        gts = [g for s in C.DEV_SETS for g in sorted((root / "dev" / s).rglob("*.gt.json"))]
    else:
        gts = sorted((root / "dev3d").rglob("*.gt.json"))
    for g in gts:
        yield g.with_name(g.name[: -len(".gt.json")]), json.loads(g.read_text())["hands"]


def negatives(root: Path):
    exts = {".jpg", ".jpeg", ".png"}
    return sorted(p for p in (root / "dev" / "negatives").iterdir() if p.suffix.lower() in exts)


def hand_error(det_kp: np.ndarray, hand: dict) -> float:
    """Mean distance over visible labelled keypoints / labelled box diagonal."""
    kp = np.asarray(hand["keypoints_2d"], float)
    vis = np.asarray(hand.get("visible", [1] * len(kp)), bool)
    if not vis.any():
        vis[:] = True
    box = hand.get("bbox_xywh")
    diag = float(np.hypot(box[2], box[3])) if box else float(np.hypot(*np.ptp(kp[vis], axis=0)))
    return float(np.linalg.norm(det_kp[vis] - kp[vis], axis=1).mean() / max(diag, 1e-6))


def found(dets, hand) -> bool:
    return any(hand_error(d.keypoints, hand) < FOUND for d in dets)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.DATA)
    ap.add_argument("--limit", type=int, default=None, help="the first N photos of each set")
    ap.add_argument("--sets", default="dev,dev3d,negatives")
    ap.add_argument("--rows", default=None, help="comma list: fast, thorough, pass:NAME (default all)")
    ap.add_argument("--misses", action="store_true", help="print the labelled hands each row misses")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    if not (args.data / "dev").is_dir():
        sys.exit(f"dev data not found at {args.data}")

    from handfit.detect import Detector
    from handfit.detect.passes import PASSES
    from handfit.io import load_image

    rows = args.rows.split(",") if args.rows else ["fast", "thorough"] + [f"pass:{p}" for p in PASSES]
    sets = args.sets.split(",")
    photos = []  # (set, path, hands or None)
    for s in ("dev", "dev3d"):
        if s in sets:
            photos += [(s, p, h) for p, h in list(labelled(args.data, s))[: args.limit]]
    if "negatives" in sets:
        photos += [("negatives", p, None) for p in negatives(args.data)[: args.limit]]
    images = {p: load_image(p).rgb for _, p, _ in photos}

    det = Detector(mode="thorough")
    det.detect(next(iter(images.values())))  # warm-up: model loading is not per-photo time
    det.detect(next(iter(images.values())), passes=("pose",))
    table = []
    for row in rows:
        kw = {"passes": (row[5:],)} if row.startswith("pass:") else {"mode": row}
        stats = {s: [0, 0] for s in ("dev", "dev3d")}
        fp, ms, misses = 0, [], []
        for s, path, hands in photos:
            t = time.perf_counter()
            dets = det.detect(images[path], **kw)
            ms.append(1000 * (time.perf_counter() - t))
            if hands is None:
                fp += len(dets)
                if dets and args.misses:
                    misses.append(f"FP {path.name}: {[(d.pass_name, d.side) for d in dets]}")
                continue
            for h in hands:
                ok = found(dets, h)
                stats[s][0] += ok
                stats[s][1] += 1
                if not ok:
                    misses.append(f"miss {s}/{path.parent.name}/{path.name}")
        r = {"row": row, "dev_found": stats["dev"][0], "dev_hands": stats["dev"][1],
             "dev3d_found": stats["dev3d"][0], "dev3d_hands": stats["dev3d"][1],
             "false_positives": fp if "negatives" in sets else None,
             "ms_per_photo": float(np.mean(ms)), "ms_median": float(np.median(ms)), "photos": len(ms)}
        table.append(r)
        print(f"{row:16s} dev {r['dev_found']}/{r['dev_hands']}  dev3d {r['dev3d_found']}/{r['dev3d_hands']}  "
              f"FP {r['false_positives']}  {r['ms_per_photo']:.0f} ms/photo (median {r['ms_median']:.0f})",
              flush=True)
        if args.misses:
            for m in misses:
                print("   ", m)

    print("\n| row | dev recall | dev3d recall | false positives (negatives) | ms per photo (mean) | median |")
    print("|---|---|---|---|---|---|")
    for r in table:
        dev = f"{r['dev_found']}/{r['dev_hands']}" if r["dev_hands"] else "-"
        d3 = f"{r['dev3d_found']}/{r['dev3d_hands']}" if r["dev3d_hands"] else "-"
        fpv = "-" if r["false_positives"] is None else str(r["false_positives"])
        print(f"| {r['row']} | {dev} | {d3} | {fpv} | {r['ms_per_photo']:.0f} | {r['ms_median']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
