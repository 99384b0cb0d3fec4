"""fitting/adam.py run_adam: minimum per item, which tensors move, the report,
and the exact stopping rule (stall, patience, min_iters, max_iters)."""

from __future__ import annotations

import pytest
import torch

from handfit.fitting.adam import LinearSchedule, run_adam

D = torch.float64


def quadratic(params):
    """Per item: weighted squared distance of x (B,2) to c (B,2) -> (B,)."""
    return {"dist": (params["w"] * (params["x"] - params["c"]).square()).sum(-1),
            "reg": 1e-3 * params["x"].square().sum(-1)}


def problem():
    c = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-4.0, 1.5]], dtype=D)
    w = torch.tensor([[1.0, 1.0], [10.0, 0.1], [2.0, 5.0]], dtype=D)
    # with the small reg term the minimum of item b, coordinate k, is w c / (w + 1e-3)
    return {"x": torch.zeros(3, 2, dtype=D), "c": c, "w": w}, w * c / (w + 1e-3)


def test_reaches_each_items_minimum_and_moves_only_named_tensors():
    params, xmin = problem()
    c0, w0 = params["c"].clone(), params["w"].clone()
    before = params
    steps = []
    rep = run_adam(params, {"x": 0.1}, quadratic, max_iters=5000, tol=1e-9, patience=200,
                   on_step=lambda it, loss: steps.append((it, loss)))
    assert params is before  # the caller's dict is updated in place
    torch.testing.assert_close(params["x"], xmin, atol=1e-5, rtol=0)
    assert not params["x"].requires_grad
    torch.testing.assert_close(params["c"], c0, atol=0, rtol=0)
    torch.testing.assert_close(params["w"], w0, atol=0, rtol=0)
    assert rep.converged and rep.iters < 5000
    # on_step: once per iteration, in order, with the summed loss as a float.
    assert [it for it, _ in steps] == list(range(1, rep.iters + 1))
    assert all(isinstance(loss, float) for _, loss in steps)
    # The report: per-item terms and total at the final parameters.
    assert set(rep.terms) == {"dist", "reg"}
    assert all(v.shape == (3,) for v in rep.terms.values()) and rep.total.shape == (3,)
    final = quadratic(params)
    for k in final:
        torch.testing.assert_close(rep.terms[k], final[k])
    torch.testing.assert_close(rep.total, final["dist"] + final["reg"])


def test_several_named_tensors_with_their_own_rates():
    params, xmin = problem()
    params["y"] = torch.ones(3, dtype=D)

    def terms(p):
        out = quadratic(p)
        out["y"] = (p["y"] - 2.0).square()
        return out

    run_adam(params, {"x": 0.1, "y": 0.0}, terms, max_iters=5000, tol=1e-9, patience=200)
    # (the constant y term makes the relative tol coarser, hence 1e-4)
    torch.testing.assert_close(params["x"], xmin, atol=1e-4, rtol=0)
    torch.testing.assert_close(params["y"], torch.ones(3, dtype=D), atol=0, rtol=0)  # lr 0: does not move
    params2, _ = problem()
    params2["y"] = torch.ones(3, dtype=D)
    params2["x"] = params2["c"].clone()  # x at its target: the x terms are small and flat
    run_adam(params2, {"y": 0.1}, terms, max_iters=5000, tol=1e-9, patience=200)
    torch.testing.assert_close(params2["y"], torch.full((3,), 2.0, dtype=D), atol=1e-4, rtol=0)
    torch.testing.assert_close(params2["x"], params2["c"], atol=0, rtol=0)  # not named: fixed


# --- the stopping rule -------------------------------------------------------
#
# Iteration 1 records the best loss; from iteration 2 on, ``stall`` counts the
# iterations in a row where no item improved by more than ``tol`` (relative).
# The loop stops after iteration ``it`` once it >= min_iters and
# stall >= patience, so a loss that never improves stops at
# max(min_iters, patience + 1).

def scripted(values):
    """terms_fn whose per-item loss at its n-th call is values(n) (B,), plus a
    zero-weight dependence on x so backward has a graph."""
    calls = [0]

    def fn(p):
        calls[0] += 1
        return {"loss": values(calls[0]) + 0.0 * p["x"].sum(-1)}

    return fn


@pytest.mark.parametrize("min_iters,patience,expect", [(10, 3, 10), (3, 5, 6), (1, 1, 2), (6, 5, 6)])
def test_a_loss_that_cannot_improve_stops_exactly(min_iters, patience, expect):
    params = {"x": torch.zeros(2, 1, dtype=D)}
    steps = []
    rep = run_adam(params, {"x": 0.0}, lambda p: {"loss": (p["x"] - 1.0).square().sum(-1)}, max_iters=100,
                   min_iters=min_iters, patience=patience, on_step=lambda it, loss: steps.append(it))
    assert (rep.iters, rep.converged) == (expect, True)
    assert steps == list(range(1, expect + 1))


def test_improvements_below_tol_count_as_stalls():
    # Relative improvement 1e-6 per call < tol 1e-4: stalls from iteration 2.
    fn = scripted(lambda n: torch.tensor([1.0 - 1e-6 * n, 2.0], dtype=D))
    rep = run_adam({"x": torch.zeros(2, 1, dtype=D)}, {"x": 0.1}, fn, max_iters=100, tol=1e-4, patience=4,
                   min_iters=2)
    assert (rep.iters, rep.converged) == (5, True)


def test_one_improving_item_keeps_the_batch_going():
    # Item 0 is constant; item 1 improves on calls 2..5 (1/n), then is flat at
    # 0.2: stall is 0 at iteration 5, 1 at 6, ..., patience 3 at 8.
    fn = scripted(lambda n: torch.tensor([1.0, 1.0 / min(n, 5)], dtype=D))
    rep = run_adam({"x": torch.zeros(2, 1, dtype=D)}, {"x": 0.1}, fn, max_iters=100, patience=3, min_iters=2)
    assert (rep.iters, rep.converged) == (8, True)
    # the report is computed once more at the final parameters
    torch.testing.assert_close(rep.total, torch.tensor([1.0, 0.2], dtype=D))


def test_max_iters_stops_unconverged():
    params, _ = problem()
    steps = []
    rep = run_adam(params, {"x": 0.1}, quadratic, max_iters=4, on_step=lambda it, loss: steps.append(it))
    assert (rep.iters, rep.converged) == (4, False)
    assert steps == [1, 2, 3, 4]
    assert (params["x"] != 0).all()  # it did take its four steps
    # also when the loss is flat but min_iters is not reached yet
    rep = run_adam({"x": torch.zeros(2, 1, dtype=D)}, {"x": 0.0}, lambda p: {"l": p["x"].sum(-1)}, max_iters=5,
                   min_iters=10, patience=1)
    assert (rep.iters, rep.converged) == (5, False)


def test_a_hands_fit_does_not_depend_on_its_batch_mates():
    """Per-hand convergence: each item stops on its own schedule and then
    stays put, so a batched fit equals the items fitted one at a time."""
    params, _ = problem()
    solo = []
    for b in range(3):
        p = {k: v[b:b + 1].clone() for k, v in params.items()}
        rep = run_adam(p, {"x": 0.05}, quadratic, max_iters=400, tol=1e-6, patience=10)
        solo.append((p["x"], rep.iters))
    iters = [n for _, n in solo]
    assert len(set(iters)) > 1, iters       # the items do converge at different times
    rep = run_adam(params, {"x": 0.05}, quadratic, max_iters=400, tol=1e-6, patience=10)
    assert rep.iters == max(iters)
    torch.testing.assert_close(params["x"], torch.cat([x for x, _ in solo]), atol=1e-12, rtol=0)


def test_shared_tensors_fall_back_to_stopping_the_whole_batch():
    # z (2,) is not batched like the (3,) loss: nobody can be frozen alone.
    params, _ = problem()
    params["z"] = torch.zeros(2, dtype=D)

    def terms(p):
        out = quadratic(p)
        out["z"] = (p["z"] - 1.0).square().sum().expand(3) / 3
        return out

    rep = run_adam(params, {"x": 0.05, "z": 0.05}, terms, max_iters=2000, tol=1e-6, patience=10)
    assert rep.converged
    torch.testing.assert_close(params["z"], torch.ones(2, dtype=D), atol=1e-2, rtol=0)


def test_falling_learning_rate_ends_at_lr_end():
    """lr_end=0: the last iteration's rate is zero, so it leaves x where the one before put it."""
    params, _ = problem()
    p1 = run_adam_params(params, max_iters=1, lr_end=1.0)
    assert torch.equal(run_adam_params(params, max_iters=2, lr_end=0.0), p1)
    assert not torch.equal(run_adam_params(params, max_iters=2, lr_end=1.0), p1)


def run_adam_params(params, max_iters, lr_end):
    p = dict(params)
    run_adam(p, {"x": 0.1}, quadratic, max_iters=max_iters, tol=0, min_iters=100,
             schedule=LinearSchedule(1.0, lr_end))
    return p["x"]


def test_linear_schedule_shares_one_fall_across_two_runs():
    """The factor goes from start at the first iteration to end at the last; a second run
    starting where the first left off continues the same line."""
    s = LinearSchedule(1.0, 0.1)
    assert s(1, 10) == 1.0 and abs(s(10, 10) - 0.1) < 1e-12 and abs(s(4, 10) - 0.7) < 1e-12
    assert LinearSchedule().constant and not s.constant
    assert LinearSchedule(0.5, 0.5)(3, 1) == 0.5


def test_lr_end_one_is_the_constant_rate():
    params, _ = problem()
    p = dict(params)
    run_adam(p, {"x": 0.1}, quadratic, max_iters=30, tol=0, min_iters=100)  # the default
    assert torch.equal(run_adam_params(params, 30, 1.0), p["x"])
    assert not torch.equal(run_adam_params(params, 30, 1.0), run_adam_params(params, 30, 0.5))


# --- Adam's eps ---------------------------------------------------------------

def flat_with_noise(seed: int):
    """x (B,2): coordinate 0 pulled to 1 (well determined), coordinate 1 flat but for a
    noise term whose gradient is ~1e-4 and new on every call -> terms_fn."""
    gen = torch.Generator().manual_seed(seed)

    def terms(p):
        noise = 1e-4 * torch.randn(p["x"].shape[0], generator=gen, dtype=D)
        return {"fit": (p["x"][:, 0] - 1.0).square(), "noise": noise * p["x"][:, 1]}

    return terms


def run_noisy(eps, iters=200):
    p = {"x": torch.zeros(16, 2, dtype=D)}
    run_adam(p, {"x": 0.01}, flat_with_noise(0), max_iters=iters, tol=0, min_iters=iters, eps=eps)
    return p["x"]


def test_eps_near_the_noise_keeps_a_flat_coordinate_still():
    """With the default eps the flat coordinate random-walks about lr·sqrt(iters) on
    gradients of 1e-4; with eps 1e-2 its steps shrink a hundredfold, and the
    well-determined coordinate still reaches its minimum."""
    walked, kept = run_noisy(1e-8), run_noisy(1e-2)
    assert walked[:, 1].square().mean().sqrt() > 0.05
    assert kept[:, 1].abs().max() < 0.005
    torch.testing.assert_close(kept[:, 0], torch.ones(16, dtype=D), atol=3e-2, rtol=0)  # lr-sized jitter, as the default
    # per tensor: an eps given for another name leaves x at the default
    assert torch.equal(run_noisy({"y": 1e-2}), walked)
    assert torch.equal(run_noisy({"x": 1e-2}), kept)


def test_eps_barely_changes_a_well_conditioned_fit():
    """Gradients of 0.1..100: eps 1e-2 ends at the same minimum as the default."""
    out = {}
    for eps in (1e-8, 1e-2):
        params, xmin = problem()
        run_adam(params, {"x": 0.1}, quadratic, max_iters=5000, tol=1e-9, patience=200, eps=eps)
        out[eps] = params["x"]
        torch.testing.assert_close(params["x"], xmin, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1e-8], out[1e-2], atol=1e-4, rtol=0)


def test_adam_state_carries_over_between_runs():
    """Two runs of N and M iterations, the second given the first's adam_state, equal
    one run of N + M; a fresh second run does not."""
    target = torch.tensor([[1.0, -2.0, 0.5]])

    def terms(p):
        return {"fit": ((p["x"] - target) ** 2).sum(-1)}

    one = {"x": torch.zeros(1, 3)}
    run_adam(one, {"x": 0.1}, terms, max_iters=12, tol=0, min_iters=100)
    a = {"x": torch.zeros(1, 3)}
    rep = run_adam(a, {"x": 0.1}, terms, max_iters=5, tol=0, min_iters=100)
    b = dict(a)
    run_adam(a, {"x": 0.1}, terms, max_iters=7, tol=0, min_iters=100, adam_state=rep.adam_state)
    run_adam(b, {"x": 0.1}, terms, max_iters=7, tol=0, min_iters=100)
    torch.testing.assert_close(a["x"], one["x"])
    assert not torch.allclose(b["x"], one["x"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_adam_steps_as_torch_optims_fused_adam(dtype):
    """FusedAdam gives torch.optim.Adam(fused=True)'s steps bit for bit: per-group rates and
    epsilons, rates changed between steps, a tensor the loss does not reach, state carried in."""
    from handfit.fitting.adam import FusedAdam

    g = torch.Generator().manual_seed(0)
    init = [torch.randn(3, 4, generator=g, dtype=dtype), torch.randn(5, generator=g, dtype=dtype),
            torch.randn(2, generator=g, dtype=dtype)]
    ours = [t.clone().requires_grad_(True) for t in init]
    ref = [t.clone().requires_grad_(True) for t in init]

    def groups(ps):
        return [{"params": [ps[0]], "lr": 0.05, "eps": 1e-8}, {"params": [ps[1]], "lr": 0.2, "eps": 1e-3},
                {"params": [ps[2]], "lr": 0.1, "eps": 1e-8}]

    a, b = FusedAdam(groups(ours)), torch.optim.Adam(groups(ref), fused=True)
    for it in range(12):
        for opt, ps in ((a, ours), (b, ref)):
            for grp in opt.param_groups:
                grp["lr"] *= 0.9
            opt.zero_grad(set_to_none=True)
            loss = (ps[0] - 1).square().sum() * (it + 1) + ps[1].abs().sum()   # ps[2]: never reached
            loss.backward()
            opt.step()
    for x, y in zip(ours, ref):
        assert torch.equal(x, y)
    assert ours[2] not in a.state and torch.equal(ours[2], init[2])
    for x, y in zip(ours[:2], ref[:2]):
        assert set(a.state[x]) == set(b.state[y])
        for k in a.state[x]:
            assert torch.equal(a.state[x][k], b.state[y][k]), k


def test_run_adam_does_not_load_torch_dynamo():
    """A process's first torch.optim optimizer imports torch._dynamo (about a second on the
    CPU); run_adam must not, or every handfit command pays it."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from handfit.fitting.adam import run_adam\n"
            "p = {'x': torch.zeros(3, 2)}\n"
            "run_adam(p, {'x': 0.1}, lambda q: {'d': (q['x'] - 1).square().sum(-1)}, max_iters=20)\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
