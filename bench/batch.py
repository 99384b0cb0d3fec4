"""Batch throughput: photos/s and hands/s of `handfit batch` for several --batch-size values.

    python bench/batch.py [FOLDER ...] [--sizes 1,4,16] [--photos 16] [--no-dense] [--device cpu]

Runs the library job (handfit.batch.run_batch, local engine: detection ahead in
a worker thread, writing behind in another) on the same photos once per batch
size, into a fresh output folder each time, after a warm-up run that loads the
models and the detector. Times are wall clock of the whole job (detect, fit,
write), so they are what a user sees minus the process start-up. On CUDA it
also samples the GPU's utilisation with nvidia-smi.
Default photos: $HANDFIT_DATA/dev/{freihand,onehand10k,hamer} (the first --photos).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import _common as C


class GpuSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.stop = [], False

    def run(self):
        while not self.stop:
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except Exception:  # noqa: BLE001 - no nvidia-smi: no samples
                return
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*")
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--no-dense", action="store_true", help="keypoint stage only (dense.enabled=false)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--detect", default="fast", choices=["fast", "thorough"],
                    help="detection mode (fast: the figures in docs/benchmarks.md; handfit batch follows --detect, "
                         "whose default is thorough)")
    C.add_set_option(ap)
    args = ap.parse_args()

    from handfit.batch.threads import configure_threads

    threads = configure_threads(args.threads)
    import torch

    from handfit.batch.inputs import collect
    from handfit.batch.runner import run_batch

    folders = args.folders or [str(C.data("dev", d)) for d in ("freihand", "onehand10k", "hamer")
                               if C.data("dev", d).is_dir()]
    photos = [u.path for u in collect(folders) if u.kind == "photo"][: args.photos]
    opts = C.fit_options(args.set, {"device": args.device, "detect": args.detect,
                                    "dense.enabled": not args.no_dense})
    dev = opts.torch_device()
    print(f"{len(photos)} photos from {', '.join(folders)}; device {dev}; torch threads {threads}; "
          f"{'keypoint stage only' if args.no_dense else 'default quality (dense stage on)'}; "
          f"{args.detect} detection")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i, p in enumerate(photos):  # one flat folder, so every run sees the same inputs
            shutil.copy(p, src / f"{i:03d}_{Path(p).name}")
        run_batch([src / sorted(x.name for x in src.iterdir())[0]], Path(tmp) / "warm", opts, gallery=False)
        print("| batch size | photos | hands | seconds | photos/s | hands/s | s/hand | GPU util % |")
        print("|---|---|---|---|---|---|---|---|")
        for bs in [int(x) for x in args.sizes.split(",")]:
            gpu = GpuSampler() if dev.type == "cuda" else None
            if gpu:
                gpu.start()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            rep = run_batch([src], Path(tmp) / f"bs{bs}", opts, batch_size=bs, gallery=False)
            dt = time.perf_counter() - t0
            util = "-"
            if gpu:
                gpu.stop = True
                gpu.join()
                util = f"{sum(gpu.samples) / max(1, len(gpu.samples)):.0f}" if gpu.samples else "n/a"
            n, h = len(rep.records), rep.hands
            print(f"| {bs} | {n} | {h} | {dt:.1f} | {n / dt:.2f} | {h / dt:.2f} | {dt / max(h, 1):.2f} | {util} |",
                  flush=True)


if __name__ == "__main__":
    main()
