"""Speed: the fit of one photo, and what it is made of.

    python bench/timing.py                       # --what fit: examples/hand.jpg, CPU and CUDA if present
    python bench/timing.py photo.jpg --repeats 5 --device cpu
    python bench/timing.py --repeats 12 --device cpu --try "dense.iters=32 dense.fine_iters=4"
    python bench/timing.py --repeats 15 --device cpu --checkout ../base   # this checkout against another
    python bench/timing.py --what detect,keypoint,load
    python bench/timing.py --what cold --repeats 6 --checkout ../base         # the whole command, fresh processes

``--what`` (comma list):

* ``fit``: wall-clock time of ``handfit.fit`` at default settings and keypoint only
  (``dense.enabled=false``), alternating fit by fit, so that a host whose speed drifts
  slows both alike. The first fit of a process builds caches and JIT-compiles the CPU
  rasterizer; it is reported separately and left out of the medians. The last lines give
  the ratio of their ``HandResult.seconds`` pair by pair. Each ``--try`` (space-separated
  FitOptions ``PATH=VALUE``, as ``--set`` takes them) joins the alternation, its
  ``HandResult.seconds`` given over the default's, fit by fit. With ``--checkout DIR``
  (repeatable) every fit runs in a long-lived child process per checkout, this one's and
  each DIR's (its handfit imported through PYTHONPATH), all alternating, and each checkout's
  this checkout's wall time is given over each DIR's, fit by fit.
* ``detect``: fast-mode ``Detector.detect`` (one full-image MediaPipe pass) over the dev and
  negative photos, 3 repeats after a warm-up: ms per photo per repeat.
* ``keypoint``: one keypoint-only fit of the image (fast detection, no side check: the
  keypoint stage and what surrounds it), median of 5 after a warm-up.
* ``cold``: what a user waits for: ``python -m handfit fit IMAGE`` start to end, in a fresh
  process each time (imports, model and detector loads, the fit, the files), ``--repeats``
  times; with ``--checkout DIR`` alternating with each DIR's handfit, run by run (the
  command runs from a temporary folder, so that the checkout on PYTHONPATH is the one imported).
* ``load``: cold start of the Anny hand from its cache: a fresh process imports
  handfit.models, loads the model and runs one forward; median of 5 processes (the cache
  must exist: any fit builds it once).

``detect``, ``keypoint`` and ``load`` time whichever handfit is imported:
``PYTHONPATH=/other/checkout python bench/timing.py --what keypoint`` times that checkout's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common as C

WHAT = ("fit", "detect", "keypoint", "load", "cold")
DETECT_SETS = ("freihand", "onehand10k", "panoptic", "tfjs_models", "hamer", "negatives")
LOAD = """
import sys, time
import torch
t = time.perf_counter()
from handfit.models import load_model
m = load_model("anny")
m(**m.zero_params(1))
print(time.perf_counter() - t, "anny" in sys.modules, "warp" in sys.modules)
"""


def fit_once(image: str, values: dict) -> dict:
    """One ``handfit.fit`` with the FitOptions ``values`` ({dotted path: value}): wall seconds,
    the hands' summed ``HandResult.seconds`` and the number of hands."""
    import torch

    import handfit
    from handfit.options import FitOptions

    opts = FitOptions.from_values(values)
    cuda = opts.torch_device().type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    res = handfit.fit(image, options=opts)
    if cuda:
        torch.cuda.synchronize()
    return {"wall": time.perf_counter() - t, "seconds": sum(h.seconds for h in res.hands), "hands": len(res.hands)}


def serve() -> None:
    """``--serve``: answer one JSON line of ``{"image", "values"}`` per fit with :func:`fit_once`'s JSON."""
    import handfit

    print(json.dumps({"handfit": handfit.__file__}), flush=True)
    for line in sys.stdin:
        q = json.loads(line)
        print(json.dumps(fit_once(q["image"], q["values"])), flush=True)


class Child:
    """A ``--serve`` process whose handfit comes from ``checkout`` (through PYTHONPATH)."""

    def __init__(self, checkout: Path):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"], env=C.checkout_env(checkout),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.module = json.loads(self.proc.stdout.readline())["handfit"]

    def __call__(self, image: str, values: dict) -> dict:
        self.proc.stdin.write(json.dumps({"image": image, "values": values}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the child for {self.module} ended")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def fit_table(args) -> None:
    import torch

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    settings = {"keypoint only": ["dense.enabled=false"], "keypoint + dense": []}
    settings.update({f"keypoint + dense, {t}": [t] for t in args.tries})
    runners = {"": fit_once}
    if args.checkout:
        runners = {str(d): Child(d) for d in [C.REPO] + args.checkout}
        for name, r in runners.items():
            print(f"checkout {name}: handfit from {r.module}")
    print(f"image {args.image}; torch threads {torch.get_num_threads()}")
    print("| device | checkout | stages | first run s | median s per photo | hands | s per hand "
          "| median HandResult.seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for dev in devices:
        keys = [(c, s) for c in runners for s in settings]
        runs = {k: [] for k in keys}
        for _ in range(args.repeats + 1):
            for c, s in keys:
                values = {**C.parse_sets(args.set + settings[s]), "device": dev}
                runs[(c, s)].append(runners[c](args.image, values))
        for c, s in keys:
            r = runs[(c, s)]
            med = statistics.median(x["wall"] for x in r[1:])
            n = r[-1]["hands"]
            print(f"| {dev} | {c or 'this'} | {s} | {r[0]['wall']:.2f} | {med:.2f} | {n} | {med / max(n, 1):.2f} "
                  f"| {statistics.median(x['seconds'] for x in r[1:]):.2f} |")
        for c in runners:
            def pairs(a, b, key="seconds"):
                return [x[key] / y[key] for x, y in zip(runs[(c, a)][1:], runs[(c, b)][1:]) if y[key] > 0]

            r = pairs("keypoint + dense", "keypoint only")
            if r:
                print(f"\n{dev}{' ' + c if c else ''}: HandResult.seconds, default / keypoint only, fit by fit: median "
                      f"{statistics.median(r):.2f} (range {min(r):.2f}-{max(r):.2f} over {len(r)} pairs)")
            for t in args.tries:
                s = f"keypoint + dense, {t}"
                r, k = pairs(s, "keypoint + dense"), pairs(s, "keypoint only")
                print(f"{dev}{' ' + c if c else ''}: {t}: HandResult.seconds over the default's, fit by fit: median "
                      f"{statistics.median(r):.3f}; over keypoint only: median {statistics.median(k):.2f}")
        base = str(C.REPO)
        for c in runners:
            if args.checkout and c != base:
                for s in settings:
                    r = [x["wall"] / y["wall"] for x, y in zip(runs[(base, s)][1:], runs[(c, s)][1:])]
                    print(f"{dev}: {s}: this checkout's wall time over {c}'s, fit by fit: median "
                          f"{statistics.median(r):.3f} (range {min(r):.3f}-{max(r):.3f} over {len(r)} pairs)")
    for r in runners.values():
        if isinstance(r, Child):
            r.close()


def detect_table(args) -> None:
    import numpy as np
    from PIL import Image

    import handfit
    from handfit.detect import Detector

    dev = C.data("dev")
    photos = sorted(p for s in DETECT_SETS for p in (dev / s).glob("*") if p.suffix.lower() in (".jpg", ".png"))
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in photos[: args.limit]]
    if not imgs:
        raise SystemExit(f"no photos under {dev}")
    det = Detector(mode="fast")
    for im in imgs[:3]:
        det.detect(im)
    reps = []
    for _ in range(3):
        t = time.perf_counter()
        for im in imgs:
            det.detect(im)
        reps.append((time.perf_counter() - t) / len(imgs) * 1000)
    det.close()
    print(f"detect: {handfit.__file__}: {len(imgs)} photos; ms/photo per repeat {[round(x, 1) for x in reps]}, "
          f"min {min(reps):.1f}")


def keypoint_table(args) -> None:
    import torch

    import handfit

    opts = C.fit_options(args.set, {"detect": "fast", "side_check_below": 0.0, "dense.enabled": False,
                                    **({"device": args.device} if args.device else {})})
    handfit.fit(args.image, options=opts)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        r = handfit.fit(args.image, options=opts)
        times.append(time.perf_counter() - t)
    h = r.hands[0]
    print(f"keypoint: {handfit.__file__}: {statistics.median(times):.2f} s per fit (median of 5); optimisation "
          f"{h.seconds:.2f} s; {h.metrics['keypoint_iters']} iterations; torch threads {torch.get_num_threads()}")


def load_table(args) -> None:
    import handfit

    here = str(Path(handfit.__file__).resolve().parents[1])   # the children load this handfit
    env = C.checkout_env(here)
    times = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, check=True, env=env)
        secs, anny_loaded, warp_loaded = out.stdout.split()
        times.append(float(secs))
    print(f"load: anny hand from cache: {statistics.median(times):.2f} s (median of 5; min {min(times):.2f} s); "
          f"anny imported: {anny_loaded}, warp imported: {warp_loaded}")


def cold_table(args) -> None:
    import tempfile

    import handfit

    here = Path(handfit.__file__).resolve().parents[1]
    dirs = [here] + [d.resolve() for d in args.checkout]
    image = str(Path(args.image).resolve())
    times: dict = {d: [] for d in dirs}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(max(1, args.repeats)):
            for d in dirs if i % 2 == 0 else dirs[::-1]:   # a, b, b, a, ...: drift hits both alike
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "handfit", "fit", image, "-o", str(Path(tmp) / "out"), "-q"],
                               cwd=tmp, env=C.checkout_env(d), check=True, capture_output=True)
                times[d].append(time.perf_counter() - t0)
    print("| checkout | median s (handfit fit, fresh process) | runs |")
    print("|---|---|---|")
    for d in dirs:
        print(f"| {d} | {statistics.median(times[d]):.2f} | {', '.join(f'{t:.2f}' for t in times[d])} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?", default=str(C.EXAMPLE))
    ap.add_argument("--what", default="fit", help=f"comma list of {', '.join(WHAT)}")
    ap.add_argument("--repeats", type=int, default=3, help="fit: timed fits per setting after the first")
    ap.add_argument("--device", default=None, help="cpu or cuda (fit: default every available one)")
    ap.add_argument("--try", dest="tries", nargs="+", action="extend", default=[], metavar="'PATH=VALUE ...'",
                    help="fit: settings to time against the default (repeatable)")
    ap.add_argument("--checkout", type=Path, action="append", default=[], metavar="DIR",
                    help="fit, cold: also time the handfit of this checkout, alternating (repeatable)")
    ap.add_argument("--limit", type=int, default=None, help="detect: the first N photos")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    C.add_set_option(ap)
    args = ap.parse_args(argv)
    if args.serve:
        return serve()
    what = args.what.split(",")
    unknown = set(what) - set(WHAT)
    if unknown:
        raise SystemExit(f"--what: unknown {sorted(unknown)}; known: {', '.join(WHAT)}")
    for t in args.tries or ["-"]:   # a bad setting fails before any timing
        C.fit_options(args.set + [t])
    for w in what:
        {"fit": fit_table, "detect": detect_table, "keypoint": keypoint_table, "load": load_table,
         "cold": cold_table}[w](args)


if __name__ == "__main__":
    main()
