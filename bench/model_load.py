"""Cold-start time of the Anny hand from its cache: a fresh process imports
handfit.models, loads the model and runs one forward (what tests/test_models.py
timed before: speed is measured here, not asserted in unit tests). The cache
must exist (any fit builds it once). Median of 5 fresh processes:

    python bench/model_load.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys

CODE = """
import sys, time
import torch
t = time.perf_counter()
from handfit.models import load_model
m = load_model("anny")
m(**m.zero_params(1))
print(time.perf_counter() - t, "anny" in sys.modules, "warp" in sys.modules)
"""


def main():
    times = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
        secs, anny_loaded, warp_loaded = out.stdout.split()
        times.append(float(secs))
    print(f"anny hand from cache: {statistics.median(times):.2f} s (median of 5; min {min(times):.2f} s); "
          f"anny imported: {anny_loaded}, warp imported: {warp_loaded}")


if __name__ == "__main__":
    main()
