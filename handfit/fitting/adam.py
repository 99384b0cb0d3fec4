"""The batched Adam loop that every fitting stage runs.

A stage is a function ``terms(params) -> dict[str, (B,) tensor]`` of weighted
loss terms; :func:`run_adam` minimises their sum for every hand at once and
stops when every hand's loss has stopped improving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class StageReport:
    iters: int
    converged: bool
    terms: dict            # name -> (B,) final weighted term values
    total: torch.Tensor    # (B,) final total loss
    metrics: dict = field(default_factory=dict)  # stage-specific measurements, name -> (B,) or scalar


def run_adam(params: dict, lrs: dict, terms_fn: Callable[[dict], dict], max_iters: int,
             tol: float = 1e-4, patience: int = 15, min_iters: int = 10,
             on_step: Callable[[int, float], None] | None = None) -> StageReport:
    """Minimise ``sum(terms_fn(params).values())`` over the tensors in ``params``
    named in ``lrs`` (name -> learning rate). Others stay fixed.

    Convergence: every hand's total loss improved by less than ``tol`` (relative)
    over the last ``patience`` iterations.
    """
    leaves = {k: params[k].detach().clone().requires_grad_(True) for k in lrs}
    opt = torch.optim.Adam([{"params": [leaves[k]], "lr": lr} for k, lr in lrs.items()])
    best = None
    stall = 0
    it = 0
    converged = False
    for it in range(1, max_iters + 1):
        cur = {**params, **leaves}
        terms = terms_fn(cur)
        total = sum(terms.values())  # (B,)
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
        opt.step()
        t = total.detach()
        if best is None:
            best = t.clone()
        else:
            improved = t < best * (1 - tol) - 1e-12
            best = torch.minimum(best, t)
            stall = 0 if bool(improved.any()) else stall + 1
        if on_step is not None:
            on_step(it, float(t.sum()))
        if it >= min_iters and stall >= patience:
            converged = True
            break
    with torch.no_grad():
        out = {**params, **{k: v.detach() for k, v in leaves.items()}}
        terms = terms_fn(out)
        total = sum(terms.values())
    params.update(out)
    return StageReport(iters=it, converged=converged, terms={k: v.detach() for k, v in terms.items()},
                       total=total.detach())
