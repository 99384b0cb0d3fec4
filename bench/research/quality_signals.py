"""How well each quality signal separates the gross hands from the rest (issue 29, item 3).

A hand is *gross* when one of its joints is further than 0.25 box sides from the truth (box
side: the larger side of the box around the truth's 2D keypoints). Each fitted hand carries
its signals in ``HandResult.metrics`` (handfit/fitting/quality.py) and a verdict against
``FitOptions.quality``; this probe measures, per signal, the AUC of gross against not gross
and the hands each threshold catches and flags wrongly.

Real data holds few gross hands, so most come from renders (``handfit.train.synth``), fitted
through the pipeline's public stages with evidence made from the truth (no MediaPipe):

* ``clean``: the true 2D keypoints and world landmarks;
* ``swapped``: two fingers' 2D keypoints swapped (a pair chosen per scene among index,
  middle, ring and pinky), the world landmarks left true -- as if the 2D model mixed them up;
* ``turned``: clean evidence, the true params turned 180° about the camera axis given as the
  start, with the start check off (``start.check=1e9``, so nothing recovers it);
* ``turned+check``: the same start with the default check (the recovery at work).

Renders run with ``dense.enabled=false``, ``views=0`` and ``side_check_below=0``, so their
``spread_rel`` and ``side_margin`` are None and ``score`` is 1: only ``--real`` measures those.

``--real``: :func:`handfit.fit_batch` (defaults and ``--set``; the detector cached) on every
``--every``-th frame of dev3d, each with its own K; each labelled hand matched to its detection
as ``handfit eval`` does; the truth's 2D is the label's, else the 3D truth projected with K.

One more candidate signal the library lacks, ``world_pa``: the fitted 3D keypoints against the
evidence's world landmarks after a similarity alignment (Procrustes), mean joint distance over
the world landmarks' palm length (wrist to middle1): swapped 2D labels contradict MediaPipe's 3D.

    OMP_NUM_THREADS=1 python bench/research/quality_signals.py --scenes 40 --json /tmp/qs.json
    OMP_NUM_THREADS=1 python bench/research/quality_signals.py --scenes 0 --real --every 4 --json /tmp/qr.json
    python bench/research/quality_signals.py --load /tmp/qs.json /tmp/qr.json   # the tables again
    python bench/research/quality_signals.py --load /tmp/qs.json /tmp/qr.json --set quality.limit_frac=0.2 --world 0.15

``--load`` recomputes each verdict from the recorded signals, so other ``quality.*`` thresholds
(and ``--world``: world_pa beyond it as one more reason) can be tried without fitting again.
Results: docs/history/quality-signals.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

GROSS = 0.25
FINGERS = {"index": 5, "middle": 9, "ring": 13, "pinky": 17}   # each finger's first keypoint (4 per finger)
PAIRS = [(a, b) for i, a in enumerate(FINGERS) for b in list(FINGERS)[i + 1:]]
# name, QualityStage field, lower is more suspect
SIGNALS = [("kp2d_max_rel", "max_rel", False), ("start_rel", "start_rel", False),
           ("spread_rel", "spread_rel", False), ("limit_frac", "limit_frac", False),
           ("side_margin", "side_margin", True), ("score", "min_score", True), ("world_pa", None, False)]
SETS = ("clean", "swapped", "turned", "turned+check", "real")


# -- measures ----------------------------------------------------------------------------------------


def err_rel(fitted: np.ndarray, truth: np.ndarray, mask=None) -> float:
    """Largest joint distance of ``fitted`` (21,2) from ``truth`` (21,2) over the truth's box side
    (the ``mask`` joints only, when given)."""
    m = np.ones(len(truth), bool) if mask is None else np.asarray(mask, bool)
    box = max(float(np.ptp(truth[m], axis=0).max()), 1.0)
    return float(np.linalg.norm(fitted[m] - truth[m], axis=-1).max() / box)


def world_pa(fitted_3d: np.ndarray, world: np.ndarray) -> float:
    """Mean joint distance of ``fitted_3d`` (21,3), aligned to ``world`` (21,3) by scale,
    rotation and translation, over the world landmarks' palm length (wrist to middle1)."""
    a, b = np.asarray(fitted_3d, float), np.asarray(world, float)
    a0, b0 = a - a.mean(0), b - b.mean(0)
    U, S, Vt = np.linalg.svd(a0.T @ b0)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, 1.0, d])
    R = U @ D @ Vt                                   # a0 @ R ~ b0
    s = float((S * np.diag(D)).sum() / max((a0 ** 2).sum(), 1e-12))
    aligned = s * a0 @ R + b.mean(0)
    palm = max(float(np.linalg.norm(b[9] - b[0])), 1e-9)
    return float(np.linalg.norm(aligned - b, axis=-1).mean() / palm)


def row(hand, truth_2d: np.ndarray, mask=None, **extra) -> dict:
    """One fitted hand's record: gross against the truth, its verdict and every signal."""
    m = hand.metrics
    e = err_rel(np.asarray(hand.keypoints_2d_fitted), np.asarray(truth_2d, float), mask)
    out = {"err_rel": e, "gross": e > GROSS, "quality": hand.quality, "reasons": list(hand.quality_reasons),
           "init": hand.init, "world_pa": world_pa(hand.keypoints_3d, hand.world_landmarks)}
    out.update({k: m.get(k) for k, _, _ in SIGNALS if k != "world_pa"})
    out.update(extra)
    return out


# -- renders -----------------------------------------------------------------------------------------


def truth_item(sc, swap: tuple | None = None):
    """A HandItem whose evidence is the scene's truth (true 2D, true 3D centred as the world
    landmarks, score 1); ``swap`` (finger, finger): those two fingers' 2D keypoints exchanged."""
    from handfit.detect import Detection
    from handfit.fitting.pipeline import HandItem

    kp, kp3 = sc.keypoints_2d.astype(np.float64), sc.keypoints.astype(np.float64)
    ev = kp.copy()
    if swap is not None:
        a, b = FINGERS[swap[0]], FINGERS[swap[1]]
        ev[a:a + 4], ev[b:b + 4] = kp[b:b + 4], kp[a:a + 4]
    H, W = sc.image.shape[:2]
    det = Detection(side="right", score=1.0, box_xyxy=np.concatenate([ev.min(0) - 8, ev.max(0) + 8]),
                    keypoints=ev, keypoints_z=np.zeros(21), world=kp3 - kp3.mean(0), image_size=(W, H))
    return HandItem(sc.K, det, None)


def turned(params: dict) -> dict:
    """The params (B,·) turned 180° about the camera's axis (a new dict)."""
    import torch

    from handfit.geometry import axis_angle_to_matrix, matrix_to_axis_angle

    go = params["global_orient"]
    turn = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, math.pi]], dtype=go.dtype))
    return {**params, "global_orient": matrix_to_axis_angle(turn @ axis_angle_to_matrix(go))}


def synthetic(n: int, sets, seed0: int, res, given=()) -> tuple[list, dict]:
    """The renders' rows, fitted per set in one batch each (``given``: the ``--set`` strings, on
    top of each set's own settings); and each set's seconds per hand."""
    import torch

    from handfit.fitting.pipeline import assemble, keypoint_fit
    from handfit.models import load_model
    from handfit.train.synth import make_scene

    model = load_model("anny", side="right")
    scenes = [make_scene(model, seed=seed0 + i, size=(256, 256)) for i in range(n)]
    rng = np.random.default_rng(seed0)
    swaps = [PAIRS[int(rng.integers(len(PAIRS)))] for _ in scenes]
    truth = {k: torch.tensor(np.stack([np.asarray(sc.params[k], np.float32) for sc in scenes])) for k in scenes[0].params}
    base = {"device": "cpu", "views": 0, "dense.enabled": False, "side_check_below": 0.0}
    runs = {"clean": (base, None, False), "swapped": (base, None, True),
            "turned": ({**base, "start.check": 1e9}, turned(truth), False),
            "turned+check": (base, turned(truth), False)}
    rows, secs = [], {}
    for name in sets:
        values, start, swap = runs[name]
        opts = C.fit_options(given, values)
        items = [truth_item(sc, swaps[i] if swap else None) for i, sc in enumerate(scenes)]
        t = time.perf_counter()
        fit = keypoint_fit("right", items, opts, res, start=start)
        hands = assemble(fit, opts.texture_size, opts.quality)
        secs[name] = (time.perf_counter() - t) / n
        for i, (sc, h) in enumerate(zip(scenes, hands)):
            rows.append(row(h, sc.keypoints_2d, set=name, id=f"seed{seed0 + i}",
                            swap="-".join(swaps[i]) if swap else None))
        print(f"{name}: {n} renders, {secs[name]:.2f} s per fit", file=sys.stderr, flush=True)
    return rows, secs


# -- real frames -------------------------------------------------------------------------------------


def real(root: Path, every: int, limit, res, given=()) -> tuple[list, float]:
    """dev3d's rows: every ``every``-th frame fitted by fit_batch (its matched detections, its K)."""
    import handfit
    from handfit.eval.datasets import open_dataset, select
    from handfit.eval.session import match_hands
    from handfit.io import load_image

    opts = C.fit_options(given)
    detector = res.detector(opts.detect, opts.max_hands)
    records = select(open_dataset(root), limit=limit, every=every)
    rows, t0, fits = [], time.perf_counter(), 0
    for k, rec in enumerate(records):
        photo = load_image(rec.image)
        gt2d = [rec.keypoints_2d(h) for h in rec.hands]
        vis = [h.visible for h in rec.hands]
        dets = list(detector.detect(photo.rgb))
        assign = match_hands(gt2d, vis, dets)
        pairs = [(i, dets[j]) for i, j in enumerate(assign) if j is not None]
        if not pairs:
            print(f"{rec.name}: no detection matched", file=sys.stderr)
            continue
        (result,) = handfit.fit_batch([photo.rgb], detections=[[d for _, d in pairs]], intrinsics=[rec.K],
                                      resources=res, options=opts)
        fits += len(pairs)
        for (i, det), hand in zip(pairs, match_fitted(result.hands, [d for _, d in pairs])):
            if hand is None:
                continue
            mask = np.isfinite(gt2d[i]).all(-1) & (np.ones(21, bool) if vis[i] is None else np.asarray(vis[i], bool))
            rows.append(row(hand, gt2d[i], mask, set="real", id=f"{rec.name}#{i}"))
        print(f"[{k + 1}/{len(records)}] {rec.name}: {len(pairs)} hand(s), "
              f"{(time.perf_counter() - t0) / max(fits, 1):.1f} s per hand", file=sys.stderr, flush=True)
    return rows, (time.perf_counter() - t0) / max(fits, 1)


def match_fitted(hands: list, dets: list) -> list:
    """fit_batch orders a photo's hands by score: the hand fitted to each detection, found by
    its evidence (the side check or the views may move it a little, never to another hand)."""
    out, used = [], set()
    for d in dets:
        dist = [np.inf if j in used else float(np.linalg.norm(np.asarray(h.keypoints_2d_detected) - d.keypoints,
                                                              axis=-1).mean()) for j, h in enumerate(hands)]
        j = int(np.argmin(dist)) if dist else None
        out.append(None if j is None or not np.isfinite(dist[j]) else hands[j])
        if j is not None:
            used.add(j)
    return out


# -- tables ------------------------------------------------------------------------------------------


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive's value > a negative's), ties half: the Mann-Whitney AUC; nan without both."""
    if not len(pos) or not len(neg):
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


def values(rows, name, lower):
    """The signal's values (sign flipped where lower is more suspect) and the rows' gross flags,
    over the rows where it is defined."""
    rs = [r for r in rows if r.get(name) is not None]
    v = np.array([(-1 if lower else 1) * float(r[name]) for r in rs])
    return v, np.array([r["gross"] for r in rs], bool)


def flagged(r, name, field, lower, q) -> bool:
    """Whether the signal alone flags the row at the threshold ``q.<field>`` (as quality.verdict)."""
    v = r.get(name)
    if v is None or field is None:
        return False
    t = getattr(q, field)
    return v < t if lower else v > t


def table(rows, q, groups) -> str:
    """Per signal and group of sets: n, gross, AUC, and at the thresholds of ``q`` the gross and
    the clean hands the signal alone flags."""
    lines = ["| signal | threshold | " + " | ".join(f"{g}: n / gross / AUC / TP / FP" for g, _ in groups) + " |",
             "|---|---|" + "---|" * len(groups)]
    for name, field, lower in SIGNALS:
        cells = []
        for _, sets in groups:
            rs = [r for r in rows if r["set"] in sets]
            v, g = values(rs, name, lower)
            if not len(v):
                cells.append("n/a")
                continue
            tp = sum(flagged(r, name, field, lower, q) for r in rs if r["gross"])
            fp = sum(flagged(r, name, field, lower, q) for r in rs if not r["gross"])
            a = auc(v[g], v[~g])
            cells.append(f"{len(v)} / {int(g.sum())} / {'n/a' if math.isnan(a) else f'{a:.3f}'} / "
                         f"{tp if field else '-'} / {fp if field else '-'}")
        thr = f"{'<' if lower else '>'} {getattr(q, field)}" if field else "(none)"
        lines.append(f"| {name} | {thr} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def suspect(r, q, world=None) -> bool:
    """The verdict of the row's signals at the thresholds ``q`` (as quality.verdict, without a
    track's side conflict), with ``world_pa > world`` as one more reason when given."""
    return (any(flagged(r, n, f, lower, q) for n, f, lower in SIGNALS)
            or (world is not None and r["world_pa"] > world))


def per_set(rows, q, world=None) -> str:
    """Per set: the hands, the gross ones, and those the verdict at ``q`` flags (recomputed from the
    signals, so ``--load`` with other ``--set quality.*`` thresholds shows their verdict)."""
    lines = ["| set | hands | gross | flagged | gross flagged | not gross flagged | err_rel p50 / max |",
             "|---|---|---|---|---|---|---|"]
    for s in SETS:
        rs = [r for r in rows if r["set"] == s]
        if not rs:
            continue
        e = np.array([r["err_rel"] for r in rs])
        sus = [suspect(r, q, world) for r in rs]
        g = [r["gross"] for r in rs]
        lines.append(f"| {s} | {len(rs)} | {sum(g)} | {sum(sus)} | {sum(a and b for a, b in zip(g, sus))} | "
                     f"{sum(b and not a for a, b in zip(g, sus))} | {np.median(e):.3f} / {e.max():.3f} |")
    return "\n".join(lines)


def at_two_percent(rows) -> str:
    """Per signal: the loosest threshold that flags at most 2% of the real not-gross hands (the
    value at that rank; a hand flags when beyond it), and what it catches of the renders."""
    real = [r for r in rows if r["set"] == "real" and not r["gross"]]
    synth = [r for r in rows if r["set"] != "real"]
    lines = ["| signal | threshold (2% of real) | real flagged | renders: gross caught | renders: not gross flagged |",
             "|---|---|---|---|---|"]
    for name, _, lower in SIGNALS:
        v = np.array([(-1 if lower else 1) * float(r[name]) for r in real if r.get(name) is not None])
        if not len(v):
            continue
        t = np.sort(v)[::-1][int(0.02 * len(v))]
        over = lambda r: r.get(name) is not None and (-1 if lower else 1) * float(r[name]) > t  # noqa: E731
        g = [r for r in synth if r["gross"]]
        lines.append(f"| {name} | {'<' if lower else '>'} {abs(t):.3f} | {sum(map(over, real))}/{len(v)} | "
                     f"{sum(map(over, g))}/{len(g)} | {sum(map(over, synth)) - sum(map(over, g))}/{len(synth) - len(g)} |")
    return "\n".join(lines)


def quantiles(rows) -> str:
    """Each signal's spread over the not-gross hands per set (what a threshold must clear) and
    its smallest value (largest, for lower-is-suspect) over the gross ones."""
    lines = ["| signal | set | not gross: p50 / p98 / max | gross: min |", "|---|---|---|---|"]
    for name, _, lower in SIGNALS:
        for s in SETS:
            rs = [r for r in rows if r["set"] == s and r.get(name) is not None]
            if not rs:
                continue
            ok = np.array([r[name] for r in rs if not r["gross"]], float)
            bad = np.array([r[name] for r in rs if r["gross"]], float)
            if lower:
                okq = f"{np.median(ok):.3f} / {np.percentile(ok, 2):.3f} (p2) / {ok.min():.3f} (min)" if len(ok) else "-"
                badq = f"{bad.max():.3f} (max)" if len(bad) else "-"
            else:
                okq = f"{np.median(ok):.3f} / {np.percentile(ok, 98):.3f} / {ok.max():.3f}" if len(ok) else "-"
                badq = f"{bad.min():.3f}" if len(bad) else "-"
            lines.append(f"| {name} | {s} | {okq} | {badq} |")
    return "\n".join(lines)


def report(rows, q, world=None) -> str:
    synth = ("clean", "swapped", "turned", "turned+check")
    groups = [(g, s) for g, s in (("renders", synth), ("swapped", ("swapped",)), ("turned", ("turned",)),
                                  ("real", ("real",))) if any(r["set"] in s for r in rows)]
    out = ["## per set" + ("" if world is None else f" (world_pa > {world} a reason too)"), per_set(rows, q, world), "", "## per signal (higher is more suspect; side_margin and score: lower)",
           table(rows, q, groups), "", "## spread of each signal", quantiles(rows)]
    if any(r["set"] == "real" for r in rows) and any(r["set"] != "real" for r in rows):
        out += ["", "## thresholds flagging at most 2% of the real hands", at_two_percent(rows)]
    sw = [r for r in rows if r["set"] in ("clean", "swapped")]
    if any(r["set"] == "swapped" for r in sw) and any(r["set"] == "clean" for r in sw):
        v = lambda s: np.array([r["world_pa"] for r in sw if r["set"] == s])  # noqa: E731
        rw = np.array([r["world_pa"] for r in rows if r["set"] == "real" and not r["gross"]])
        gs = np.array([r["world_pa"] for r in sw if r["set"] == "swapped" and r["gross"]])
        out += ["", f"world_pa, swapped against clean renders (gross or not): AUC {auc(v('swapped'), v('clean')):.3f}; "
                    f"clean max {v('clean').max():.3f}, swapped min {v('swapped').min():.3f} "
                    f"median {np.median(v('swapped')):.3f}",
                f"world_pa, swapped renders against the real not-gross hands: AUC {auc(v('swapped'), rw):.3f}; "
                f"gross swapped against them: AUC {auc(gs, rw):.3f}"]
        g = [r for r in sw if r["set"] == "swapped"]
        for t in (0.05, 0.08, 0.1, 0.12, 0.15, 0.2):
            out.append(f"  world_pa > {t}: swapped {sum(r['world_pa'] > t for r in g)}/{len(g)} "
                       f"(gross {sum(r['world_pa'] > t for r in g if r['gross'])}/{sum(r['gross'] for r in g)}), "
                       f"clean {sum(r['world_pa'] > t for r in sw if r['set'] == 'clean')}/{len(sw) - len(g)}, "
                       f"real {sum(r['world_pa'] > t for r in rows if r['set'] == 'real')}/"
                       f"{sum(r['set'] == 'real' for r in rows)}")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=40, help="renders (0: none)")
    ap.add_argument("--seed", type=int, default=1000, help="the first render's seed")
    ap.add_argument("--sets", default="clean,swapped,turned,turned+check", help="which render sets")
    ap.add_argument("--real", action="store_true", help="also fit dev3d (expensive: about 3-6 s per frame)")
    ap.add_argument("--data", type=Path, default=C.data("dev3d"))
    ap.add_argument("--every", type=int, default=4, help="every N-th dev3d frame")
    ap.add_argument("--limit", type=int, default=None, help="at most N dev3d frames")
    ap.add_argument("--json", type=Path, default=None, help="write every hand's row here")
    ap.add_argument("--world", type=float, default=None,
                    help="count world_pa above this as one more reason in the per-set table")
    ap.add_argument("--load", type=Path, nargs="*", default=None, help="tables of earlier --json files (no fitting)")
    C.add_set_option(ap)
    args = ap.parse_args(argv)
    q = C.fit_options(args.set).quality
    if args.load:
        rows = [r for p in args.load for r in json.loads(p.read_text())["rows"]]
        print(report(rows, q, args.world))
        return
    rows, secs = [], {}
    res = C.cached_resources()
    if args.scenes:
        r, secs = synthetic(args.scenes, [s for s in args.sets.split(",") if s], args.seed, res, args.set)
        rows += r
    if args.real:
        r, secs["real"] = real(args.data, args.every, args.limit, res, args.set)
        rows += r
    print(report(rows, q, args.world))
    print("\nseconds per hand: " + ", ".join(f"{k} {v:.2f}" for k, v in secs.items()))
    if args.json:
        args.json.write_text(json.dumps({"settings": C.describe(args.set), "seconds_per_hand": secs,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
