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
    adam_state: dict = field(default_factory=dict)  # name -> Adam's moments and step count at the end


@dataclass(frozen=True)
class LinearSchedule:
    """The learning rates' factor, falling linearly from ``start`` at the first iteration to
    ``end`` at a run's ``max_iters``-th (so that two runs can share one fall).

    Adam's steps are about a learning rate long whatever the gradient, so at a constant
    rate it ends wherever its last step put it near the minimum; a falling rate lets it settle."""

    start: float = 1.0
    end: float = 1.0

    def __call__(self, it: int, max_iters: int) -> float:
        return self.start + (self.end - self.start) * (it - 1) / max(max_iters - 1, 1)

    @property
    def constant(self) -> bool:
        return self.start == 1.0 and self.end == 1.0


def _fusable(leaves: dict) -> bool:
    return all(v.device.type in ("cpu", "cuda") and v.is_floating_point() for v in leaves.values())


class FusedAdam:
    """``torch.optim.Adam(groups, fused=True)`` for groups of one tensor each, step for step
    the same kernel and state, without :mod:`torch.optim`: a process's first torch.optim
    optimizer imports ``torch._dynamo``, about a second on the CPU that every ``handfit``
    call paid once. ``param_groups`` (dicts with "params", "lr", "eps") and ``state`` (tensor
    -> {"step", "exp_avg", "exp_avg_sq"}) are laid out as torch.optim's."""

    betas = (0.9, 0.999)

    def __init__(self, groups: list[dict]):
        self.param_groups = [dict(g) for g in groups]
        self.state: dict = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:  # as torch.optim: a tensor the loss did not reach keeps its state
                    continue
                st = self.state.get(p)
                if not st:
                    st = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                          "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                          "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                torch._foreach_add_([st["step"]], 1)
                torch._fused_adam_([p], [p.grad], [st["exp_avg"]], [st["exp_avg_sq"]], [], [st["step"]],
                                   amsgrad=False, lr=g["lr"], beta1=self.betas[0], beta2=self.betas[1],
                                   weight_decay=0.0, eps=g["eps"], maximize=False, grad_scale=None, found_inf=None)


def run_adam(params: dict, lrs: dict, terms_fn: Callable[[dict], dict], max_iters: int,
             tol: float = 1e-4, patience: int = 15, min_iters: int = 10,
             on_step: Callable[[int, float], None] | None = None, schedule: LinearSchedule | None = None,
             eps: float | dict = 1e-8, adam_state: dict | None = None) -> StageReport:
    """Minimise ``sum(terms_fn(params).values())`` over the tensors in ``params``
    named in ``lrs`` (name -> learning rate). Others stay fixed.

    Convergence, per hand: once a hand's total loss has improved by less than
    ``tol`` (relative) for ``patience`` iterations in a row (and at least
    ``min_iters`` have run), that hand is frozen: its rows of every optimised
    tensor stay where they are. The loop ends when every hand is frozen. A
    hand's fit therefore does not depend on which other hands share its batch
    (Adam is elementwise). When an optimised tensor is not batched along dim 0
    like the loss, hands cannot be frozen one by one and the loop ends once
    every hand has stalled.

    ``schedule``: the learning rates' factor at each iteration
    (:class:`LinearSchedule`, called as ``schedule(it, max_iters)``); None: constant.

    ``eps``: Adam's epsilon, one for every tensor or a dict name -> epsilon (names
    left out keep 1e-8). A step is ``lr * m / (sqrt(v) + eps)``: where a
    coordinate's gradients are well above ``eps`` it is Adam's step, about
    ``lr`` long whatever their size; where they are well below, the step
    shrinks with them (momentum SGD with rate ``lr / eps``). In flat directions
    of the loss the tiny default turns noise-sized gradients into full-size
    steps; an ``eps`` near their size keeps such coordinates where they are.

    ``adam_state``: a previous run's ``StageReport.adam_state`` (same tensor names
    and shapes) to continue from: its moments and step count, instead of a fresh
    Adam, whose first steps are about a learning rate long on every coordinate.
    """
    leaves = {k: params[k].detach().clone().requires_grad_(True) for k in lrs}
    eps_of = eps if isinstance(eps, dict) else {k: eps for k in lrs}
    # fused: one kernel per tensor. The default path runs a dozen small ops per tensor
    # per step, which on the CPU cost as much as a third of a keypoint iteration.
    groups = [{"params": [leaves[k]], "lr": lr, "eps": eps_of.get(k, 1e-8)} for k, lr in lrs.items()]
    opt = FusedAdam(groups) if _fusable(leaves) else torch.optim.Adam(groups)
    for k, st in (adam_state or {}).items():
        if k in leaves:
            opt.state[leaves[k]] = {n: v.clone() if torch.is_tensor(v) else v for n, v in st.items()}
    best = None
    stall = None       # (B,) iterations in a row without improvement, per hand
    frozen = None      # (B,) bool
    kept = {}          # name -> the frozen hands' rows, restored after every step
    it = 0
    converged = False
    for it in range(1, max_iters + 1):
        if schedule is not None and not schedule.constant:
            f = schedule(it, max_iters)
            for group, lr in zip(opt.param_groups, lrs.values()):
                group["lr"] = lr * f
        cur = {**params, **leaves}
        terms = terms_fn(cur)
        total = sum(terms.values())  # (B,)
        opt.zero_grad(set_to_none=True)
        total.sum().backward()
        opt.step()
        t = total.detach()
        if best is None:
            best = t.clone()
            stall = torch.zeros_like(t, dtype=torch.long)
            frozen = torch.zeros_like(t, dtype=torch.bool)
            per_hand = t.dim() == 1 and all(v.dim() > 0 and v.shape[0] == t.shape[0] for v in leaves.values())
        else:
            improved = t < best * (1 - tol) - 1e-12
            best = torch.minimum(best, t)
            stall = torch.where(improved, torch.zeros_like(stall), stall + 1)
        with torch.no_grad():
            if kept:  # Adam's momentum would still move frozen hands: put them back
                for k, v in leaves.items():
                    v[frozen] = kept[k][frozen]
            if per_hand and it >= min_iters:
                newly = (stall >= patience) & ~frozen
                if bool(newly.any()):
                    for k, v in leaves.items():
                        kept.setdefault(k, v.detach().clone())[newly] = v[newly]
                    frozen |= newly
        if on_step is not None:
            on_step(it, float(t.sum()))
        if it >= min_iters and bool((stall >= patience).all()):
            converged = True
            break
    with torch.no_grad():
        out = {**params, **{k: v.detach() for k, v in leaves.items()}}
        terms = terms_fn(out)
        total = sum(terms.values())
    params.update(out)
    state = {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in opt.state[leaves[k]].items()}
             for k in lrs if leaves[k] in opt.state}
    return StageReport(iters=it, converged=converged, terms={k: v.detach() for k, v in terms.items()},
                       total=total.detach(), adam_state=state)
