"""Could a per-hand gate free the dense stage only where a photo's evidence is good?

On synthetic renders a dense stage without its holds (no 2D hinge, anchor or
depth term, plain Adam, more iterations) cuts PA-MPJPE by 15%; on real photos
the holds are what keep it from harm. This fits every dev3d hand with the
defaults and with such a free stage (``--free``), then sorts the hands by how
well the keypoint fit's mesh already agreed with the photo's hand mask
(``silhouette_iou_before``, the dense stage's own measure) and prints, per
quartile, each fit's change of PA-MPJPE and 2D error from the keypoint fit.
If the free stage helped on the best-agreeing real hands, their quartile
would show it, and a gate on that measure could let it run there.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python bench/research/evidence_gate.py

The same quartiles on the synthetic renders, from two ``bench/synthetic.py --json``
runs (the defaults, and the free stage's ``--set`` values):

    python bench/research/evidence_gate.py --synthetic default.json free.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

FREE = ("dense.weights.kp_trust=0 dense.weights.anchor=0 dense.weights.depth=0 dense.adam_eps=1e-8 "
        "dense.adam_eps_shape=1e-8 dense.adam_eps_transl=1e-8 dense.iters=100 dense.fine_iters=20")
GATES = ("silhouette_iou_before", "silhouette_iou_after", "photometric_before")


def per_hand(records, opts, detector, res, staged):
    """[(keypoint PA mm, dense PA mm, keypoint 2D px, dense 2D px, dense-stage metrics)] per fitted hand."""
    from handfit.eval import evaluate
    from handfit.eval import metrics as M

    seen = {}

    def on_fit(rec, result):
        for h in result.hands:  # eval stores h.keypoints_3d itself as the dense prediction;
            seen[id(h.keypoints_3d)] = (h.keypoints_3d, h.metrics)  # kept, so its id stays its own

    ev = evaluate(records, opts, ("mediapipe", "keypoint", "dense"), detector=detector, resources=res,
                  fit_batch=staged, warmup=False, on_fit=on_fit)
    rows = []
    for e in ev.hands:
        k, d = e.preds.get("keypoint", {}), e.preds.get("dense", {})
        if k.get("kp3d") is None or d.get("kp3d") is None:
            continue
        m = seen[id(d["kp3d"])][1]
        rows.append((float(M.pa_mpjpe(k["kp3d"], e.gt3d).item()) * 1000, float(M.pa_mpjpe(d["kp3d"], e.gt3d).item()) * 1000,
                     float(np.nanmean(M.kp2d_errors(k["kp2d"], e.gt2d, e.visible))),
                     float(np.nanmean(M.kp2d_errors(d["kp2d"], e.gt2d, e.visible))),
                     {g: float(m[g]) for g in GATES}))
    return rows


def quartiles(gate, base, free, name):
    """Print each quartile of ``gate`` (N,) with the change of PA-MPJPE and 2D error from
    the keypoint fit; base, free: (N,4) keypoint PA, dense PA, keypoint 2D, dense 2D."""
    print(f"\nBy quartile of the default fit's {name} (change from the keypoint fit):\n")
    print("| quartile | hands | mean gate | default PA mm | free PA mm | default 2D px | free 2D px |")
    print("|---|---|---|---|---|---|---|")
    for i, q in enumerate(np.array_split(np.argsort(gate), 4)):
        print(f"| {i + 1} | {len(q)} | {gate[q].mean():.3f} | {(base[q, 1] - base[q, 0]).mean():+.2f} | "
              f"{(free[q, 1] - free[q, 0]).mean():+.2f} | {(base[q, 3] - base[q, 2]).mean():+.2f} | "
              f"{(free[q, 3] - free[q, 2]).mean():+.2f} |")
    print(f"\ncorrelation of the gate with the free stage's PA-MPJPE change: "
          f"{np.corrcoef(gate, free[:, 1] - free[:, 0])[0, 1]:+.2f}")


def synthetic(default_json: Path, free_json: Path, gate_name: str) -> None:
    """The quartiles on the hands both bench/synthetic.py runs fitted."""
    import json

    d, f = json.loads(default_json.read_text()), json.loads(free_json.read_text())
    both = sorted(set(d["both"]) & set(f["both"]))

    def table(run):
        return np.array([[run["rows"]["keypoint"][i]["pa_mpjpe"], run["rows"]["dense"][i]["pa_mpjpe"],
                          run["rows"]["keypoint"][i]["kp2d"], run["rows"]["dense"][i]["kp2d"]] for i in both])

    base, free = table(d), table(f)
    gate = np.array([d["rows"]["dense"][i]["fit"][gate_name] for i in both])
    print(f"\n{len(both)} synthetic hands; PA-MPJPE keypoint {base[:, 0].mean():.3f}, default "
          f"{base[:, 1].mean():.3f}, free {free[:, 1].mean():.3f} mm")
    quartiles(gate, base, free, gate_name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.data("dev3d"))
    ap.add_argument("--every", type=int, default=1, help="every N-th image (1: all)")
    ap.add_argument("--free", default=FREE, help="the free stage's FitOptions PATH=VALUE, space-separated")
    ap.add_argument("--gate", choices=GATES, default=GATES[0], help="the measure the hands are sorted by")
    ap.add_argument("--synthetic", nargs=2, type=Path, metavar=("DEFAULT_JSON", "FREE_JSON"),
                    help="instead of dev3d: two bench/synthetic.py --json outputs")
    args = ap.parse_args(argv)
    if args.synthetic:
        return synthetic(*args.synthetic, args.gate)

    from handfit.eval import open_dataset, select

    records = select(open_dataset(args.data), every=args.every)
    res = C.cached_resources()  # detections, views and keypoint fits are shared by both settings
    detector, staged = res.detector("thorough"), C.StagedFit(res)
    runs = {}
    for name, setting in (("default", []), ("free", [args.free])):
        runs[name] = per_hand(records, C.fit_options(setting, {"device": "cpu"}), detector, res, staged)
    res.close()
    base, free = np.array([r[:4] for r in runs["default"]]), np.array([r[:4] for r in runs["free"]])
    if len(base) != len(free):
        raise SystemExit("the two settings fitted different hands")
    print(f"\n{len(base)} hands of {args.data}; free stage: {args.free}\n")
    print("| fit | PA-MPJPE mm | 2D px |\n|---|---|---|")
    print(f"| keypoint | {base[:, 0].mean():.3f} | {base[:, 2].mean():.3f} |")
    print(f"| default | {base[:, 1].mean():.3f} | {base[:, 3].mean():.3f} |")
    print(f"| free | {free[:, 1].mean():.3f} | {free[:, 3].mean():.3f} |")
    quartiles(np.array([r[4][args.gate] for r in runs["default"]]), base, free, args.gate)


if __name__ == "__main__":
    main()
