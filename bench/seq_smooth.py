"""The sequence keypoint fit with its temporal smoothness term at several weights, keypoint stage only.

    OMP_NUM_THREADS=1 python bench/seq_smooth.py --runs run02 --weights 1 0

For each weight, the chosen runs of a sequence dataset (default ../shared/data/dev3d_seq) go
through ``handfit.eval.evaluate_sequences`` with the variants mediapipe, keypoint (each frame
alone) and sequence_keypoint (``pipeline.fit_track`` with that ``smooth_weight``, on the same
multi-view evidence as the single-frame fit); prints each weight's summary table
(PA-MPJPE, 2D error, accel_mm, ...). Every weight detects the frames again (same detections:
MediaPipe is deterministic).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "dev3d_seq"


def main(argv=None) -> int:
    from handfit.eval.datasets import read_runs
    from handfit.eval.report import summary_table
    from handfit.eval.sequence import evaluate_sequences
    from handfit.fitting import pipeline
    from handfit.fitting.resources import Resources
    from handfit.options import FitOptions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--runs", nargs="*", default=None, help="run names (or their start, e.g. run02); default all")
    ap.add_argument("--weights", nargs="+", type=float, default=[1.0, 0.0], help="smooth_weight values")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1
    runs = [r for r in read_runs(args.data)
            if args.runs is None or any(r[0].split("/")[-1].startswith(n) for n in args.runs)]
    opts = FitOptions.from_values({"dense.enabled": False})
    with Resources() as res:
        for w in args.weights:
            def fit(items, o, dense, w=w):
                track = pipeline.fit_track(pipeline.refine_evidence(items, o, res), o, res, smooth_weight=w)
                return pipeline.assemble(track, texture_size=1), None

            ev = evaluate_sequences(runs, opts, ("mediapipe", "keypoint", "sequence_keypoint"), resources=res,
                                    fit_sequence=fit)
            print(f"smooth_weight {w:g}, runs: {', '.join(n for n, _ in runs)}")
            print(summary_table(ev.summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
