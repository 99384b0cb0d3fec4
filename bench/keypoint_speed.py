"""Time of one keypoint-only fit of examples/hand.jpg, to compare checkouts.

Fast detection and no side check where the checkout has them, so only the
keypoint stage and what surrounds it are timed; median of 5 after a warm-up:

    python bench/keypoint_speed.py
    PYTHONPATH=/path/to/older/checkout python bench/keypoint_speed.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

IMAGE = str(Path(__file__).resolve().parents[1] / "examples" / "hand.jpg")


def main():
    import handfit
    import torch

    if (Path(handfit.__file__).parent / "options.py").is_file():
        from handfit.options import DenseStage, FitOptions

        fields = FitOptions.__dataclass_fields__
        extra = {k: v for k, v in (("detect", "fast"), ("side_check_below", 0.0)) if k in fields}
        if "enabled" in DenseStage.__dataclass_fields__:
            opts = FitOptions(**extra)
            opts.dense.enabled = False
        else:  # checkouts from before the stage's switch was dense.enabled
            opts = FitOptions(appearance=False, **extra)
    else:  # checkouts from before handfit/options.py
        from handfit.api import FitOptions

        opts = FitOptions(appearance=False)
    handfit.fit(IMAGE, options=opts)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        r = handfit.fit(IMAGE, options=opts)
        times.append(time.perf_counter() - t)
    h = r.hands[0]
    print(f"{handfit.__file__}: {statistics.median(times):.2f} s per fit (median of 5); optimisation "
          f"{h.seconds:.2f} s; {h.metrics['keypoint_iters']} iterations; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
