"""Write an :class:`~handfit.eval.run.Evaluation`: ``metrics.json``, ``per_image.csv``,
``pck.json``, ``predictions.json`` and ``pck.png``, and format its summary as a Markdown table."""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np

from ..io import jsonfile
from .run import SUMMARY_KEYS

__all__ = ["write_report", "metrics_document", "predictions_document", "summary_table", "texture_table"]

_LABELS = {"mediapipe": "MediaPipe world landmarks", "keypoint": "keypoint fit", "dense": "dense fit",
           "sequence_keypoint": "sequence keypoint fit", "sequence_dense": "sequence dense fit"}


def _clean(x):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def metrics_document(summary: dict) -> dict:
    """``{"<variant>": {key: value for key in SUMMARY_KEYS}}`` with JSON-safe values (NaN -> null),
    then any further keys a variant's summary has (``accel_mm`` for sequences)."""
    return {v: {k: _clean(m[k]) for k in (*SUMMARY_KEYS, *(k for k in m if k not in SUMMARY_KEYS))}
            for v, m in summary.items()}


def _array(a):
    return None if a is None else [[_clean(x) for x in row] for row in np.asarray(a, np.float64).tolist()]


def predictions_document(hands: list) -> dict:
    """Every labelled hand's ground truth and each variant's keypoints, so that other
    metrics (or other methods' predictions) can be computed on the same hands:
    ``{"units": ..., "hands": [{"run" (--sequence only), "image", "hand", "side", "detected_side", "gt_3d" (21x3 m),
    "gt_2d" (21x2 px), "visible", "<variant>": {"keypoints_3d", "keypoints_2d"}}]}``; a fitted variant's
    also holds ``detected_2d`` (21x2 px: the evidence it was fitted to), ``quality``, ``quality_reasons``
    ``kp2d_max_rel`` and every quality signal (``signals``: handfit/fitting/quality.py), so a
    verdict can be judged again under other thresholds."""
    out = []
    for e in hands:
        h = {**({"run": e.run} if getattr(e, "run", None) else {}), "image": e.record, "hand": e.hand,
             "side": e.side, "detected_side": e.det_side, "gt_3d": _array(e.gt3d), "gt_2d": _array(e.gt2d),
             "visible": None if e.visible is None else [bool(v) for v in np.asarray(e.visible)]}
        for v, p in e.preds.items():
            h[v] = {"keypoints_3d": _array(p.get("kp3d")), "keypoints_2d": _array(p.get("kp2d"))}
            if "quality" in p:  # a fitted variant: its verdict, and the evidence it was fitted to
                h[v].update({"detected_2d": _array(p.get("detected_2d")), "quality": p["quality"],
                             "quality_reasons": list(p.get("quality_reasons") or []),
                             "kp2d_max_rel": _clean(p.get("kp2d_max_rel")),
                             "signals": {k: _clean(x) if not isinstance(x, str) else x
                                         for k, x in (p.get("signals") or {}).items()}})
        out.append(h)
    return {"units": "keypoints_3d and gt_3d in metres, camera frame; keypoints_2d and gt_2d in pixels",
            "keypoint_order": "MediaPipe's 21 landmarks", "hands": out}


def _write_atomic(path: Path, text: str):
    """Write a file so that a kill at any moment leaves the old or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_report(ev, out, plot: bool = True) -> dict:
    """Write the evaluation's files into folder ``out`` (each atomically) -> {name: path}.
    ``plot``: also pck.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "csv": out / "per_image.csv", "curves": out / "pck.json",
             "predictions": out / "predictions.json", "plot": out / "pck.png"}
    _write_atomic(paths["metrics"], jsonfile.dumps(metrics_document(ev.summary), indent=1) + "\n")
    buf = io.StringIO(newline="")
    cols = list(ev.rows[0].keys()) if ev.rows else ["image", "hand"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in ev.rows:
        w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else
                        (f"{v:.4f}" if isinstance(v, float) else v)) for k, v in r.items()})
    _write_atomic(paths["csv"], buf.getvalue())
    _write_atomic(paths["curves"], jsonfile.dumps({
        "thresholds_mm": [float(t) for t in ev.thresholds_mm],
        "pck": {v: [_clean(c) for c in ev.curves[v]] for v in ev.curves},
        "note": "fraction of the Procrustes-aligned keypoints within each threshold, over all detected hands",
    }, indent=1) + "\n")
    _write_atomic(paths["predictions"], jsonfile.dumps(predictions_document(ev.hands)) + "\n")
    if not (plot and _plot(ev, paths["plot"])):
        del paths["plot"]
    return paths


def _plot(ev, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no pck.png (pip install 'handfit[eval]')", stacklevel=2)
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for v, curve in ev.curves.items():
        if not np.isfinite(curve).all():
            continue
        m = ev.summary[v]
        ax.plot(ev.thresholds_mm, curve,
                label=f"{_LABELS.get(v, v)}: AUC {m['auc_0_50']:.3f}, PA-MPJPE {m['pa_mpjpe_mm']:.2f} mm")
    ax.set_xlabel("threshold (mm, after Procrustes alignment)")
    ax.set_ylabel("fraction of keypoints (3D PCK)")
    ax.set_xlim(ev.thresholds_mm[0], ev.thresholds_mm[-1])
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return True


def summary_table(summary: dict) -> str:
    """The summary as a Markdown table, one row per variant (with an acceleration column
    when the summary has ``accel_mm``; ``suspect``: hands the verdict calls suspect)."""
    accel = any("accel_mm" in m for m in summary.values())
    head = "| variant | PA-MPJPE mm | RR-MPJPE mm | AUC 0-50 | 2D px |" + (" accel mm/f² |" if accel else "") + \
        " recall | wrong side | s/hand | n | suspect |"
    lines = [head, "|" + "---|" * (11 if accel else 10)]

    def f(x, fmt):
        x = _clean(x)
        return "–" if x is None else format(x, fmt)

    for v, m in summary.items():
        lines.append(f"| {v} | {f(m['pa_mpjpe_mm'], '.2f')} | {f(m['rr_mpjpe_mm'], '.2f')} | "
                     f"{f(m['auc_0_50'], '.3f')} | {f(m['kp2d_px'], '.2f')} | "
                     + (f"{f(m.get('accel_mm'), '.2f')} | " if accel else "") + f"{f(m['recall'], '.3f')} | "
                     f"{m['wrong_side']} | {f(m['s_per_hand'], '.2f')} | {m['n']} | {f(m.get('suspect'), 'd')} |")
    return "\n".join(lines)


def texture_table(summary: dict) -> str:
    """The texture scores of the variants that have them as a Markdown table
    (:func:`handfit.eval.sequence.texture_summary`; 0-1, lower is better)."""
    lines = ["| variant | seen | novel | flat | novel/flat | loses to flat | leave-one-out | its flat | loo/flat |"
             " loo loses | pairs |", "|" + "---|" * 11]

    def f(x, fmt=".4f"):
        x = _clean(x)
        return "–" if x is None else format(x, fmt)

    for v, m in summary.items():
        if "tex_seen" not in m:
            continue
        lines.append(f"| {v} | {f(m['tex_seen'])} | {f(m['tex_novel'])} | {f(m['tex_flat'])} | "
                     f"{f(m['tex_novel_vs_flat'], '.3f')} | {f(m['tex_novel_loses'], '.1%')} | "
                     f"{f(m.get('tex_loo'))} | {f(m.get('tex_loo_flat'))} | {f(m.get('tex_loo_vs_flat'), '.3f')} | "
                     f"{f(m.get('tex_loo_loses'), '.1%')} | {m['tex_pairs']} |")
    return "\n".join(lines)
