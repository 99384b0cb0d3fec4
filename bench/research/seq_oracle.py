"""Where a sequence fit's acceleration error comes from, read back from a ``handfit eval --sequence`` output.

    python bench/research/seq_oracle.py /tmp/seqeval

For each variant in OUT/predictions.json, accel_mm (mm/frame², as metrics.accel_errors) of:

* ``raw``: the fit's root-relative keypoints (what metrics.json reports);
* ``rot``: each frame's keypoints turned (about the root) by the rotation that best aligns
  them to the truth's (Procrustes, rotation only): what is left once the global orientation is right;
* ``rot+scale``: the same with the best scale too;
* ``rot in-plane`` / ``rot tilt``: that rotation split into its twist about the camera axis
  (a turn in the image plane) and the rest (the swing: a tilt towards or away from the camera),
  each applied alone: which part of the orientation error makes the acceleration error;
* ``pa``: the Procrustes-aligned keypoints (rotation, scale, translation);
* ``glob only``: the truth's articulation carried by the fit's own orientation and scale
  (the truth aligned onto the fit): the error that the global rotation and scale alone make;
* ``smooth λ``: the fit's root-relative keypoints smoothed along each run, per joint, by the
  least-squares smoother argmin |x - p|² + λ |D2 x|² (D2: second differences), and its PA-MPJPE;
* ``z-smooth λ``: the same on the depth (camera z) of the root-relative keypoints only;
* ``true z``: the fit's root-relative keypoints with the truth's root-relative depth;
* ``true dist``: each frame scaled about the camera centre to the truth's wrist depth.

Then, per variant, the raw error split into its image-plane (x, y) and depth (z) parts, and the
truth's own root-relative acceleration split the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402
from handfit.eval import metrics as M  # noqa: E402


def _kabsch(pred, gt) -> tuple:
    """(T,N,3) x2 -> R (T,3,3) with pred @ R closest to gt, and the singular values times
    the reflection fix (T,3), for the best scale."""
    H = pred.transpose(0, 2, 1) @ gt
    U, S, Vt = np.linalg.svd(H)
    D = np.ones((len(pred), 3))
    D[:, 2] = np.sign(np.linalg.det(U @ Vt))
    return (U * D[:, None, :]) @ Vt, S * D


def rotation_align(pred, gt, scale: bool) -> np.ndarray:
    """(T,N,3) root-relative pred turned (and scaled) about the origin onto root-relative gt."""
    R, SD = _kabsch(pred, gt)
    s = SD.sum(1) / (pred ** 2).sum((1, 2)) if scale else np.ones(len(pred))
    return s[:, None, None] * (pred @ R)


def rotation_parts(pred, gt) -> tuple:
    """(T,N,3) root-relative pred turned onto gt by only the twist about the camera's z axis
    of the aligning rotation (in-plane), and by only its swing (tilt). -> (in_plane, tilt)"""
    from scipy.spatial.transform import Rotation

    Q = Rotation.from_matrix(_kabsch(pred, gt)[0].transpose(0, 2, 1))  # gt ≈ Q pred (columns)
    x, y, z, w = Q.as_quat().T
    twist = Rotation.from_quat(np.stack([0 * x, 0 * y, z, w], 1) / np.hypot(z, w)[:, None])
    swing = Q * twist.inv()
    turn = lambda r: np.einsum("tij,tnj->tni", r.as_matrix(), pred)  # noqa: E731
    return turn(twist), turn(swing)


def acceleration(x: np.ndarray) -> np.ndarray:
    """Second differences along the first axis: (T,...) -> (T-2,...)."""
    return x[2:] - 2 * x[1:-1] + x[:-2]


def smoother(T: int, lam: float) -> np.ndarray:
    """(T,T) matrix of argmin |x - p|² + lam |D2 x|²."""
    if T < 3:
        return np.eye(T)
    D = np.zeros((T - 2, T))
    for i in range(T - 2):
        D[i, i:i + 3] = (1, -2, 1)
    return np.linalg.inv(np.eye(T) + lam * D.T @ D)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--lams", nargs="*", type=float, default=[0.1, 0.3, 1, 3])
    args = ap.parse_args(argv)
    variants, runs = C.read_predictions(args.out)
    cols = (["raw", "rot", "rot in-plane", "rot tilt", "rot+scale", "pa", "glob only", "true z", "true dist"]
            + [f"smooth {lam:g}" for lam in args.lams] + [f"z-smooth {lam:g}" for lam in args.lams])
    split = {}
    print("| variant | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for v in variants:
        acc = {c: [] for c in cols}
        pa = {c: [] for c in cols}
        for hs in runs.values():
            ok = np.array([v in h for h in hs])
            if ok.sum() < 3:
                continue
            # keep the longest stretch of consecutive fitted frames so every transform is defined
            gt = np.stack([np.array(h["gt_3d"], float) for h, o in zip(hs, ok) if o]) * 1000.0
            p = np.stack([np.array(h[v]["keypoints_3d"], float) for h, o in zip(hs, ok) if o]) * 1000.0
            valid = np.ones(len(p), bool)
            # a missed frame breaks the run: mark its neighbours' accelerations invalid
            idx = np.flatnonzero(ok)
            gap = np.zeros(len(p), bool)
            gap[1:] |= np.diff(idx) > 1
            gap[:-1] |= np.diff(idx) > 1
            valid &= ~gap
            pr, gr = p - p[:, :1], gt - gt[:, :1]
            forms = {"raw": pr, "rot": rotation_align(pr, gr, False), "rot+scale": rotation_align(pr, gr, True),
                     "pa": M.similarity_align(p, gt), "glob only": M.similarity_align(gr, pr)}
            forms["rot in-plane"], forms["rot tilt"] = rotation_parts(pr, gr)
            forms["true z"] = np.concatenate([pr[..., :2], gr[..., 2:]], -1)
            forms["true dist"] = pr * (gt[:, 0, 2] / p[:, 0, 2])[:, None, None]
            for lam in args.lams:
                forms[f"smooth {lam:g}"] = np.einsum("st,tnc->snc", smoother(len(pr), lam), pr)
                z = np.einsum("st,tn->sn", smoother(len(pr), lam), pr[..., 2])
                forms[f"z-smooth {lam:g}"] = np.concatenate([pr[..., :2], z[..., None]], -1)
            for c, x in forms.items():
                a = M.accel_errors(x, gt)
                a[~valid] = np.nan   # accel errors at a gap mix frames that are not neighbours
                a[:-1][gap[1:]] = np.nan
                a[1:][gap[:-1]] = np.nan
                acc[c].extend(a[np.isfinite(a)])
                pa[c].extend(M.pa_mpjpe(x, gt))
            e = acceleration(pr) - acceleration(gr)                        # (T-2,N,3)
            keep = np.isfinite(M.accel_errors(pr, gr))[1:-1] & ~gap[1:-1] & ~gap[:-2] & ~gap[2:]
            for name, x in (("xy", np.linalg.norm(e[..., :2], axis=-1)), ("z", np.abs(e[..., 2])),
                            ("truth xy", np.linalg.norm(acceleration(gr)[..., :2], axis=-1)),
                            ("truth z", np.abs(acceleration(gr)[..., 2]))):
                split.setdefault(v, {}).setdefault(name, []).extend(x.mean(-1)[keep])
        print(f"| {v} | " + " | ".join(f"{np.mean(acc[c]):.2f} ({np.mean(pa[c]):.2f})" for c in cols) + " |")
    print("cells: accel_mm (PA-MPJPE mm)")
    print()
    print("| variant | error xy | error z | truth xy | truth z |")
    print("|---|---|---|---|---|")
    for v, d in split.items():
        print(f"| {v} | " + " | ".join(f"{np.mean(d[k]):.2f}" for k in ("xy", "z", "truth xy", "truth z")) + " |")
    print("mm/frame²: mean over joints of the acceleration error's (or the truth's acceleration's) norm "
          "across the image plane and its size in depth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
