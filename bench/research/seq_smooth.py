"""The sequence keypoint fit at several track settings (its temporal smoothness above all),
keypoint stage only.

    OMP_NUM_THREADS=1 python bench/research/seq_smooth.py --runs run02 --try "track.smooth=1" "track.smooth=0"

For each setting (``--try``: space-separated FitOptions ``PATH=VALUE``, ``-`` the defaults;
``--set`` applies to all), the chosen runs of a sequence dataset (default
``$HANDFIT_DATA/dev3d_seq``) go through ``handfit.eval.evaluate_sequences`` with the variants
mediapipe, keypoint (each frame alone) and sequence_keypoint (``pipeline.fit_track`` on the
same multi-view evidence as the single-frame fit); prints each setting's summary table
(PA-MPJPE, 2D error, accel_mm, ...). The detections and views are computed once
(a cached detector: MediaPipe is deterministic).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

TRIES = ["track.smooth=1", "track.smooth=0"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.data("dev3d_seq"))
    ap.add_argument("--runs", nargs="*", default=None, help="run names (or their start, e.g. run02); default all")
    ap.add_argument("--try", dest="tries", nargs="+", action="extend", default=None, metavar="'PATH=VALUE ...'",
                    help=f"settings to compare (default: {' | '.join(TRIES)})")
    C.add_set_option(ap)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 1

    from handfit.eval.datasets import read_runs
    from handfit.eval.report import summary_table
    from handfit.eval.sequence import evaluate_sequences

    runs = C.pick_runs(read_runs(args.data), args.runs)
    with C.cached_resources() as res:
        for s in args.tries or TRIES:
            opts = C.fit_options(args.set + [s], {"dense.enabled": False})
            ev = evaluate_sequences(runs, opts, ("mediapipe", "keypoint", "sequence_keypoint"), resources=res)
            print(f"{C.describe([s])}, runs: {', '.join(n for n, _ in runs)}")
            print(summary_table(ev.summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
