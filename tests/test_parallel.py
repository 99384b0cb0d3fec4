"""handfit.parallel: independent calls side by side, the same results as one after another."""

from __future__ import annotations

import threading

import pytest

from handfit import parallel


def test_workers_follow_the_thread_setting(monkeypatch):
    monkeypatch.setenv("HANDFIT_THREADS", "3")
    assert parallel.workers() == 3
    monkeypatch.setenv("HANDFIT_THREADS", "64")
    assert parallel.workers() == 4
    monkeypatch.delenv("HANDFIT_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert parallel.workers() == 1


@pytest.mark.parametrize("threads", ["1", "2", "4"])
def test_each_keeps_the_order(monkeypatch, threads):
    monkeypatch.setenv("HANDFIT_THREADS", threads)
    assert parallel.each(lambda x: x * x, range(11)) == [x * x for x in range(11)]
    assert parallel.each(lambda x: x, []) == []


def test_each_uses_threads_and_never_nests(monkeypatch):
    monkeypatch.setenv("HANDFIT_THREADS", "2")
    names = parallel.each(lambda _: threading.current_thread().name, range(4))
    assert all(n.startswith("handfit-each") for n in names)
    # an each() inside an each() runs in its caller's thread: it never waits on its own pool
    inner = parallel.each(lambda _: parallel.each(lambda _: threading.current_thread().name, range(3)), range(2))
    assert all(len(set(names)) == 1 for names in inner)
    monkeypatch.setenv("HANDFIT_THREADS", "1")
    assert parallel.each(lambda _: threading.current_thread().name, range(3)) == [threading.current_thread().name] * 3


def test_each_raises_the_first_error(monkeypatch):
    monkeypatch.setenv("HANDFIT_THREADS", "2")

    def f(x):
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        parallel.each(f, range(6))


def test_one_torch_thread_inside_the_block_and_as_before_after():
    import torch

    from handfit.parallel import one_torch_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2

        @one_torch_thread()
        def inside():
            return torch.get_num_threads()

        assert inside() == 1 and inside() == 1 and torch.get_num_threads() == 2
        with pytest.raises(ValueError), one_torch_thread():
            raise ValueError("restored on errors too")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
