"""Fast-mode detection time per photo, to compare checkouts.

Times ``Detector.detect`` (the single full-image MediaPipe pass) over the dev
and negative photos, 3 repeats after a warm-up, and prints ms per photo per
repeat. Run it once per checkout, alternating, on an idle machine:

    python bench/detect_speed.py                           # this checkout
    PYTHONPATH=/path/to/older/checkout python bench/detect_speed.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"
SETS = ("freihand", "onehand10k", "panoptic", "tfjs_models", "hamer", "negatives")


def main():
    import handfit
    from handfit.detect import Detector

    photos = sorted(p for s in SETS for p in (DEV / s).glob("*") if p.suffix.lower() in (".jpg", ".png"))
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    try:
        det = Detector(mode="fast")
    except TypeError:  # checkouts from before the detection cascade have no modes
        det = Detector()
    for im in imgs[:3]:
        det.detect(im)
    reps = []
    for _ in range(3):
        t = time.perf_counter()
        for im in imgs:
            det.detect(im)
        reps.append((time.perf_counter() - t) / len(imgs) * 1000)
    print(f"{handfit.__file__}: {len(imgs)} photos; ms/photo per repeat {[round(x, 1) for x in reps]}, "
          f"min {min(reps):.1f}")


if __name__ == "__main__":
    main()
