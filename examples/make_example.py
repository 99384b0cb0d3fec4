"""Render examples/hand.jpg: the default hand model, posed, textured and lit
over a procedural background. The project makes its own example photo rather
than shipping a third-party one.

    python examples/make_example.py [--seed 6]

It also writes examples/hand.truth.json with the ground truth (side, 2D and 3D
keypoints, camera) so the demo's result can be compared with it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import imageio.v3 as iio

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--side", default="right", choices=["right", "left"])
    ap.add_argument("--out", type=Path, default=HERE / "hand.jpg")
    args = ap.parse_args(argv)

    from handfit.detect import Detector
    from handfit.models import load_model
    from handfit.train.synth import make_scene

    scene = make_scene(load_model("anny", side=args.side), args.seed, size=(480, 640))
    iio.imwrite(args.out, scene.image, quality=92)
    truth = {"side": scene.side, "K": scene.K.tolist(), "keypoints_2d": scene.keypoints_2d.tolist(),
             "keypoints_3d": scene.keypoints.tolist(),
             "params": {k: v.tolist() for k, v in scene.params.items()}}
    args.out.with_suffix(".truth.json").write_text(json.dumps(truth, indent=1))
    found = Detector(max_hands=2).detect(scene.image)
    print(f"wrote {args.out} ({scene.side} hand); MediaPipe finds: {[d.side for d in found] or 'nothing'}")


if __name__ == "__main__":
    main()
