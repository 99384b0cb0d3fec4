"""The tail: the hands a fit gets grossly wrong, and whether its verdict says so (issue 29).

    python bench/tail.py run OUT                                  # every set (hours on 2 cores)
    python bench/tail.py run OUT --sets devphotos,asl25           # some of them
    python bench/tail.py run OUT --sets devphotos --checkout ../base   # another checkout's handfit
    PYTHONPATH=../base python bench/tail.py run OUT --sets devphotos   # the same
    python bench/tail.py run /tmp/t --sets dev3d,devphotos,asl25 --every 26 --limit 4   # smoke
    python bench/tail.py table OUT                                # the table, from whatever is finished

``run`` writes one sub-folder of OUT per set, with the names ``table`` reads, so that ``table``
also reads folders the CLI wrote itself (``handfit eval DATA/dev3d --compare -o OUT/dev3d``):

* ``dev3d``: ``handfit eval DATA/dev3d --compare``; its ``dense`` variant (the default fit);
* ``seq``: ``handfit eval DATA/dev3d_seq --sequence --compare``; two rows: ``seq frames``
  (``dense``, each frame alone) and ``seq tracks`` (``sequence_dense``, each run as a track);
* ``devphotos``: :func:`handfit.fit_batch` on each labelled dev photo alone (freihand,
  onehand10k, panoptic, tfjs_models/hands.jpg; FitOptions defaults and ``--set``), each
  labelled hand matched to the fitted hand whose evidence is nearest; ``devphotos/hands.jsonl``
  (one line per labelled hand; a rerun fits only the photos not in it);
* ``asl1``, ``asl5``, ``asl25``: ``handfit batch dev/tfjs_models/asl_hand.25fps.mp4 --every E``;
  against the evidence only (no truth).

Each run's command, handfit module and commit head ``OUT/<set>.log``; the log's last line says
when it ended. ``table`` marks a set whose log has no end yet (still running, or killed) as
partial. ``--every N`` / ``--limit N`` thin a run for a smoke test: every N-th image and the
first N images (for ``seq``, the first N runs); for the asl sets ``--limit N`` fits only the first
N chosen frames (a re-encoded clip of the video's start) and ``--every`` does not apply.
``--set`` reaches the dev photos only (the CLI takes no FitOptions path): CLI flags for the
other sets go through ``--cli-arg`` (repeatable, e.g. ``--cli-arg=--views=0``).

Words (issue 29): a hand's *evidence* is what it was fitted to (``keypoints_2d_detected``; in
predictions.json ``detected_2d``, per variant or per hand). *Box side*: the larger side of the
box around the reference's keypoints (the labelled joints of the truth; the evidence's 21).
*err_rel* = max over joints of ``|fitted - reference|`` / box side. *Gross*: err_rel > 0.25.
*Flagged*: ``quality == "suspect"`` (result.json per hand; predictions.json per variant); outputs
without verdicts give n/a. An eval output without ``detected_2d`` falls back to the variant's
``kp2d_max_rel`` for err_rel against the evidence, else n/a.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _common as C

GROSS = 0.25
VIDEO = ("dev", "tfjs_models", "asl_hand.25fps.mp4")
EVERY = {"asl1": 1, "asl5": 5, "asl25": 25}
SETS = ("dev3d", "seq", "devphotos", "asl25", "asl5", "asl1")
ROWS = {"dev3d": [("dev3d", "dense")], "seq": [("seq frames", "dense"), ("seq tracks", "sequence_dense")]}
END = ("tail.py: exit", "\nreal\t", "\nreal ")    # a run's end in its log (ours, or bash's `time`)


# -- run ---------------------------------------------------------------------------------------------


def child_env() -> dict:
    """This process's environment with the repository after the PYTHONPATH entries, as
    ``_common`` orders them: a child imports the same handfit as this process."""
    given = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(given + [str(C.REPO)]))


def handfit_source(env: dict, cwd: Path) -> str:
    """The handfit a child with ``env`` imports: its folder and that checkout's commit."""
    code = "import handfit, os; print(os.path.dirname(os.path.dirname(os.path.abspath(handfit.__file__))))"
    root = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "handfit"],
                           capture_output=True, text=True).stdout.strip()
    return f"{root} at {head.stdout.strip() or '?'}{' with uncommitted changes in handfit/' if dirty else ''}"


def clip(video: Path, frames: int, dest: Path) -> Path:
    """The first ``frames`` frames of ``video`` re-encoded to ``dest/<same name>`` (a smoke run's
    short video; re-encoding changes the pixels a little)."""
    import cv2

    dest.mkdir(parents=True, exist_ok=True)
    src = cv2.VideoCapture(str(video))
    fps = src.get(cv2.CAP_PROP_FPS) or 25.0
    w, h = int(src.get(cv2.CAP_PROP_FRAME_WIDTH)), int(src.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out = dest / video.name
    sink = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for _ in range(frames):
        ok, frame = src.read()
        if not ok:
            break
        sink.write(frame)
    sink.release()
    src.release()
    return out


def cli_command(name: str, out: Path, args) -> list:
    """The handfit command line of set ``name`` (an eval or a batch)."""
    cmd = [sys.executable, "-m", "handfit"]
    if name in EVERY:
        video = C.data(*VIDEO)
        if args.limit:
            video = clip(video, args.limit * EVERY[name], out / f".clip-{name}")
        cmd += ["batch", str(video), "--every", str(EVERY[name]), "-o", str(out / name), "-q"]
        return cmd + (["--overwrite"] if args.overwrite else []) + args.cli_arg
    data = C.data("dev3d_seq" if name == "seq" else "dev3d")
    cmd += ["eval", str(data), "--compare", "-o", str(out / name), "-q"] + (["--sequence"] if name == "seq" else [])
    cmd += ["--every", str(args.every)] if args.every > 1 else []
    cmd += ["--limit", str(args.limit)] if args.limit else []
    return cmd + args.cli_arg


def finished(out: Path, name: str) -> bool | None:
    """Whether set ``name``'s run in ``out`` ended: True, False (its log has no end), None (no log)."""
    log = out / f"{name}.log"
    if not log.exists():
        return None
    text = log.read_text(errors="replace")
    return any(e in text for e in END)


def run(args) -> None:
    if args.checkout:   # the same command in a child whose handfit comes from the checkout
        env = C.checkout_env(args.checkout.resolve())
        argv = list(sys.argv[1:])
        i = argv.index("--checkout") if "--checkout" in argv else None
        argv = argv[:i] + argv[i + 2:] if i is not None else [a for a in argv if not a.startswith("--checkout=")]
        sys.exit(subprocess.call([sys.executable, str(Path(__file__).resolve()), *argv], env=env))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = child_env()
    source = handfit_source(env, out)
    for name in args.sets:
        if finished(out, name) and (out / name).exists() and not args.overwrite and name != "devphotos":
            print(f"{name}: done before (OUT/{name}.log); --overwrite reruns it", file=sys.stderr)
            continue
        log = out / f"{name}.log"
        t = time.perf_counter()
        with open(log, "w") as f:
            f.write(f"# handfit from {source}\n")
            f.flush()
            if name == "devphotos":
                cmd = [sys.executable, str(Path(__file__).resolve()), "devphotos", str(out / name),
                       "--every", str(args.every), *(["--limit", str(args.limit)] if args.limit else []),
                       *(["--overwrite"] if args.overwrite else []), *[f"--set={s}" for s in args.set]]
            else:
                cmd = cli_command(name, out, args)
            f.write("# " + " ".join(cmd) + "\n")
            f.flush()
            print(f"{name}: {' '.join(cmd)}\n  handfit from {source}; log {log}", file=sys.stderr, flush=True)
            rc = subprocess.call(cmd, env=env, cwd=out, stdout=f, stderr=subprocess.STDOUT)
            f.write(f"\ntail.py: exit {rc} after {time.perf_counter() - t:.0f} s\n")
        print(f"{name}: exit {rc} after {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)


# -- the dev photos ------------------------------------------------------------------------------------


def reference_mask(kp: np.ndarray, visible) -> np.ndarray:
    """(21,) bool: the joints that count (finite, and labelled visible when the label says)."""
    m = np.isfinite(kp).all(-1)
    return m if visible is None else m & np.asarray(visible, bool)


def box_side(kp: np.ndarray, mask=None) -> float:
    """The larger side of the box around ``kp`` (21,2) (its ``mask`` joints), at least 1 px."""
    p = kp if mask is None else kp[mask]
    return max(float(np.ptp(p, axis=0).max()), 1.0) if len(p) else float("nan")


def match(labels: list, hands: list) -> list:
    """The fitted hand for each label (or None): pairs taken nearest first, the distance the mean
    over the labelled joints between the label and the hand's evidence; a hand further than half
    the label's box side is not that label's."""
    pairs = []
    for i, lab in enumerate(labels):
        kp = np.asarray(lab["keypoints_2d"], float)
        m = reference_mask(kp, lab.get("visible"))
        for j, h in enumerate(hands):
            d = float(np.linalg.norm(np.asarray(h.keypoints_2d_detected) - kp, axis=-1)[m].mean())
            if d < 0.5 * box_side(kp, m):
                pairs.append((d, i, j))
    out, used = [None] * len(labels), set()
    for _, i, j in sorted(pairs):
        if out[i] is None and j not in used:
            out[i] = hands[j]
            used.add(j)
    return out


def devphotos(args) -> None:
    """Fit each labelled dev photo alone; append one line per labelled hand to OUT/hands.jsonl."""
    import handfit

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / "hands.jsonl"
    if args.overwrite and path.exists():
        path.unlink()
    before = path.read_text().splitlines() if path.exists() else []
    done = {json.loads(line)["image"] for line in before if line.strip()}
    opts = C.fit_options(args.set)
    photos = list(C.labelled_dev())[:: args.every][: args.limit]
    print(f"handfit from {handfit.__file__}; {len(photos)} photos, {len(done)} done before", flush=True)
    for s, img, gt in photos:
        key = f"{s}/{img.name}"
        if key in done:
            continue
        t = time.perf_counter()
        res = handfit.fit_batch([img], options=opts)[0]
        secs = time.perf_counter() - t
        lines = []
        for i, (lab, h) in enumerate(zip(gt["hands"], match(gt["hands"], res.hands))):
            rec = {"image": key, "hand": i, "side": lab.get("side"), "gt_2d": lab["keypoints_2d"],
                   "visible": lab.get("visible"), "hands_fitted": len(res.hands), "seconds": secs}
            if h is not None:
                rec.update(detected_2d=np.asarray(h.keypoints_2d_detected).tolist(),
                           fitted_2d=np.asarray(h.keypoints_2d_fitted).tolist(), fitted_side=h.side,
                           quality=getattr(h, "quality", None), quality_reasons=getattr(h, "quality_reasons", None),
                           kp2d_max_rel=h.metrics.get("kp2d_max_rel"))
            lines.append(json.dumps(rec))
        with open(path, "a") as f:
            f.write("".join(line + "\n" for line in lines))
        print(f"{key}: {len(res.hands)} hands fitted, {sum('fitted_2d' in x for x in lines)}/{len(lines)} labels "
              f"matched, {secs:.1f} s", flush=True)


# -- table ---------------------------------------------------------------------------------------------


def arr(x) -> np.ndarray | None:
    """A JSON (21,k) list as floats (null -> NaN), or None."""
    if x is None:
        return None
    return np.array([[np.nan if v is None else v for v in row] for row in x], float)


def err_rel(fitted, ref, mask=None) -> float:
    """max_j |fitted_j - ref_j| / box side of ref (over ``mask``'s joints); NaN without ``ref``."""
    if fitted is None or ref is None:
        return float("nan")
    m = reference_mask(ref, None) if mask is None else mask
    if not m.any():
        return float("nan")
    return float(np.linalg.norm(fitted[m] - ref[m], axis=-1).max() / box_side(ref, m))


def hand_row(item: str, side, fitted, truth, mask, evidence, quality, reasons, fallback=None) -> dict:
    """One fitted hand's figures: err_rel of the fit against the truth and against the evidence,
    and of the evidence against the truth (a fit that followed wrong evidence, or labels that
    place joints elsewhere than MediaPipe does). ``fallback``: err_rel against the evidence when
    ``evidence`` is None."""
    e_ev = err_rel(fitted, evidence)
    if not np.isfinite(e_ev) and fallback is not None:
        e_ev = float(fallback)
    return {"item": item, "side": side, "truth": err_rel(fitted, truth, mask), "evidence": e_ev,
            "evidence_truth": err_rel(evidence, truth, mask), "quality": quality, "reasons": reasons or []}


def eval_hands(folder: Path, variant: str) -> tuple:
    """(fitted hands' rows, labelled hands left without a fit) of a handfit eval folder's variant."""
    doc = json.loads((folder / "predictions.json").read_text())
    rows, missed = [], 0
    for h in doc["hands"]:
        v = h.get(variant)
        fitted = arr(v.get("keypoints_2d")) if isinstance(v, dict) else None
        if fitted is None or not np.isfinite(fitted).all():
            missed += 1
            continue
        truth = arr(h.get("gt_2d"))
        mask = None if truth is None else reference_mask(truth, h.get("visible"))
        evidence = arr(v.get("detected_2d") if v.get("detected_2d") is not None else h.get("detected_2d"))
        item = f"{h['image']}" + (f" hand {h['hand']}" if h.get("hand") else "")
        rows.append(hand_row(item, h.get("side"), fitted, truth, mask, evidence, v.get("quality"),
                             v.get("quality_reasons"), v.get("kp2d_max_rel")))
    return rows, missed


def devphoto_hands(folder: Path) -> tuple:
    rows, missed = [], 0
    for line in (folder / "hands.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        h = json.loads(line)
        if h.get("fitted_2d") is None:
            missed += 1
            continue
        truth = arr(h["gt_2d"])
        item = h["image"] + (f" hand {h['hand']}" if h["hand"] else "")
        rows.append(hand_row(item, h.get("side") or h.get("fitted_side"), arr(h["fitted_2d"]), truth,
                             reference_mask(truth, h.get("visible")), arr(h["detected_2d"]), h.get("quality"),
                             h.get("quality_reasons"), h.get("kp2d_max_rel")))
    return rows, missed


def batch_hands(folder: Path) -> tuple:
    """Every fitted hand of a handfit batch folder's videos (their frame_* result.json files)."""
    rows = []
    for video in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for frame in sorted(video.glob("frame_*/result.json")):
            doc = json.loads(frame.read_text())
            n = int(re.sub(r"\D", "", frame.parent.name) or 0)
            for i, h in enumerate(doc.get("hands", [])):
                item = f"{video.name} frame {n}" + (f" hand {i}" if len(doc["hands"]) > 1 else "")
                rows.append(hand_row(item, h.get("side"), arr(h["keypoints_2d_fitted"]), None, None,
                                     arr(h["keypoints_2d_detected"]), h.get("quality"), h.get("quality_reasons")))
    return rows, None


def read_set(out: Path, name: str) -> list:
    """[(row label, hands' rows, missed, note)] of set ``name`` in ``out``; [] when it has no output."""
    folder = out / name
    if name in EVERY:
        ok = folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
        parts = [(name, *batch_hands(folder))] if ok else []
    elif name == "devphotos":
        parts = [(name, *devphoto_hands(folder))] if (folder / "hands.jsonl").exists() else []
    else:
        ok = (folder / "predictions.json").exists()
        parts = [(label, *eval_hands(folder, v)) for label, v in ROWS[name]] if ok else []
    note = "partial (its run has not ended)" if finished(out, name) is False else ""
    return [(label, rows, missed, note) for label, rows, missed in parts]


def _pct(vals) -> str:
    v = np.asarray([x for x in vals if np.isfinite(x)], float)
    return "n/a" if not len(v) else f"{np.percentile(v, 95):.3f} / {np.percentile(v, 99):.3f}"


def _gross(rows, key, judged: bool) -> str:
    have = [r for r in rows if np.isfinite(r[key])]
    if not have:
        return "n/a"
    g = [r for r in have if r[key] > GROSS]
    flagged = f"{sum(r['quality'] == 'suspect' for r in g)} flagged" if judged else "flagged n/a"
    return f"{len(g)} ({flagged})"


def table(args) -> None:
    out = args.out
    found, gross = [], []
    for name in args.sets:
        found += read_set(out, name)
    if not found:
        sys.exit(f"no finished set under {out} (sub-folders {', '.join(SETS)})")
    print(f"Tail: {out} (gross: a joint further than {GROSS} box sides from the reference; "
          f"p95 / p99 of err_rel = max joint error / box side)\n")
    print("| set | hands | missed | gross vs truth | gross vs evidence | p95 / p99 vs truth | p95 / p99 vs evidence "
          "| suspect |")
    print("|---|---|---|---|---|---|---|---|")
    for label, rows, missed, note in found:
        judged = any(r["quality"] is not None for r in rows)
        suspect = sum(r["quality"] == "suspect" for r in rows) if judged else "n/a"
        print(f"| {label}{' *' if note else ''} | {len(rows)} | {'-' if missed is None else missed} "
              f"| {_gross(rows, 'truth', judged)} | {_gross(rows, 'evidence', judged)} "
              f"| {_pct(r['truth'] for r in rows)} | {_pct(r['evidence'] for r in rows)} | {suspect} |")
        gross += [(label, r, judged) for r in rows if r["truth"] > GROSS or r["evidence"] > GROSS]
    if any(note for *_, note in found):
        print("\n\\* partial: " + ", ".join(label for label, *_, note in found if note) + " (the run has not ended)")
    shown = {label.split()[0] for label, *_ in found}
    waiting = [n for n in args.sets if n not in shown and finished(out, n) is False]
    if waiting:
        print(f"\nNo output yet (running, or stopped early): {', '.join(waiting)}")
    print(f"\nGross hands ({len(gross)}), worst first:\n")
    if not gross:
        return
    print("| set | image / frame | side | vs truth | vs evidence | evidence vs truth | flagged | reasons |")
    print("|---|---|---|---|---|---|---|---|")

    def worst(x):
        r = x[1]
        return -max(v for v in (r["truth"], r["evidence"], 0.0) if np.isfinite(v))

    for label, r, judged in sorted(gross, key=worst)[: args.list]:
        f = lambda v: "n/a" if not np.isfinite(v) else f"{v:.3f}"   # noqa: E731
        flag = ("yes" if r["quality"] == "suspect" else "no") if judged else "n/a"
        print(f"| {label} | {r['item']} | {r['side'] or '-'} | {f(r['truth'])} | {f(r['evidence'])} "
              f"| {f(r['evidence_truth'])} | {flag} "
              f"| {'; '.join(r['reasons']) or '-'} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sets = lambda s: [x for x in s.split(",") if x]   # noqa: E731

    r = sub.add_parser("run", help="run the evals, batches and fits into OUT/<set>/")
    r.add_argument("out", type=Path)
    r.add_argument("--sets", type=sets, default=list(SETS), help=f"comma list of {','.join(SETS)} (default: all)")
    r.add_argument("--every", type=int, default=1, help="thin: every N-th image (evals, dev photos)")
    r.add_argument("--limit", type=int, default=None, help="thin: the first N images (seq: runs; asl: chosen frames)")
    r.add_argument("--checkout", type=Path, help="run the handfit of this checkout (PYTHONPATH does the same)")
    r.add_argument("--overwrite", action="store_true", help="redo sets that ended before (dev photos: all photos)")
    r.add_argument("--cli-arg", action="append", default=[], help="passed to every handfit eval/batch (repeatable)")
    C.add_set_option(r)

    d = sub.add_parser("devphotos", help="(used by run) fit the labelled dev photos into OUT/hands.jsonl")
    d.add_argument("out", type=Path)
    d.add_argument("--every", type=int, default=1)
    d.add_argument("--limit", type=int, default=None)
    d.add_argument("--overwrite", action="store_true")
    C.add_set_option(d)

    t = sub.add_parser("table", help="print the table of what OUT holds")
    t.add_argument("out", type=Path)
    t.add_argument("--sets", type=sets, default=list(SETS))
    t.add_argument("--list", type=int, default=50, help="list at most N gross hands")
    args = ap.parse_args(argv)
    bad = [s for s in getattr(args, "sets", []) if s not in SETS]
    if bad:
        ap.error(f"unknown sets {bad}; choose from {','.join(SETS)}")
    {"run": run, "devphotos": devphotos, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
