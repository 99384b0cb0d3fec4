"""Time the texture prior: one hand, 256² output, on the CPU (the issue's bar: <= 50 ms).

    OMP_NUM_THREADS=1 python bench/texture_prior.py [--tokens 512] [--weights PATH]
"""

import argparse
import statistics
import time

import torch

import _common  # noqa: F401 - the import path
from handfit.texture.prior import TexturePrior, load_prior

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--tokens", type=int, default=512)
ap.add_argument("--repeat", type=int, default=20)
ap.add_argument("--weights", default=None, help="a prior file (default: the shipped one, else a fresh model)")
a = ap.parse_args()
net = load_prior(a.weights) if a.weights else (load_prior() or TexturePrior().eval())
g = torch.Generator().manual_seed(0)
B, N = 1, a.tokens
uv, rgb = torch.rand(B, N, 2, generator=g), torch.rand(B, N, 3, generator=g)
conf, cos = torch.rand(B, N, generator=g), torch.rand(B, N, generator=g)
mask = torch.ones(B, N, dtype=torch.bool)
times = []
with torch.inference_mode():
    for i in range(a.repeat + 3):
        t = time.perf_counter()
        tex = net(uv, rgb, conf, cos, mask)
        if i >= 3:
            times.append(time.perf_counter() - t)
params = sum(p.numel() for p in net.parameters())
print(f"texture prior: {params / 1e6:.2f} M parameters, {N} tokens -> {tuple(tex.shape[1:])}, "
      f"threads={torch.get_num_threads()}: median {1000 * statistics.median(times):.1f} ms/hand, "
      f"min {1000 * min(times):.1f} ms over {len(times)} runs")
