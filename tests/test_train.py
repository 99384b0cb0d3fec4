"""`handfit train`: config validation, a short run, kill -9 and --resume, two DDP ranks."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from handfit.train.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[1]

# Smaller than examples/configs/tiny_cpu.yaml: seconds, not minutes.
TINY = {
    "seed": 0, "threads": 1, "checkpoint_every": 4, "val_every": 4, "log_every": 2,
    "model": {"dim": 16, "heads": 2, "layers": 1, "cross_layers": 1, "grid": 4, "freqs": 3, "channels": [8],
              "size": 32},
    "data": {"crop": 48, "max_tokens": 64, "sources": [{"kind": "synthetic", "scenes": 6}], "val_synthetic": 2},
    "optim": {"steps": 12, "batch_size": 2, "lr": 0.003, "warmup": 2},
}


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    e.pop("WORLD_SIZE", None)
    return e


def write(tmp_path, cfg=TINY, name="tiny.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("raw, key", [
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"optim": {"stepz": 3}}, "optim.stepz"),
    ({"model": {"dim": 30, "heads": 4}}, "model.heads"),
    ({"data": {"sources": [{"kind": "pictures"}]}}, "data.sources[0].kind"),
    ({"data": {"sources": [{"kind": "photos"}]}}, "data.sources[0].path"),
    ({"data": {"hide": [0.6, 0.2]}}, "data.hide"),
    ({"data": {"hide": ["a", "b"]}}, "data.hide"),
    ({"data": {"hide": [0.2, None]}}, "data.hide"),
    ({"device": "tpu"}, "device"),
    ({"loss": {"masked_norm": "l2"}}, "loss.masked_norm"),
    ({"amp": "yes"}, "amp"),
    ({"optim": {"batch_size": 0}}, "optim.batch_size"),
    ({"data": {"sources": [{"kind": "photos", "path": "x", "dense": "no"}]}}, "data.sources[0].dense"),
    ({"data": {"sources": [{"kind": "photos", "path": "x", "dense": True, "appearance": True}]}},
     "data.sources[0].appearance"),
])
def test_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert str(e.value).startswith(key + ":")


def test_photo_sources_switch_the_dense_stage_under_its_old_name_too():
    src = {"kind": "photos", "path": "x"}
    for extra, on in (({}, True), ({"dense": False}, False), ({"appearance": False}, False)):
        cfg = parse_config({"data": {"sources": [{**src, **extra}]}})
        assert cfg.data.sources[0].dense is on, extra


def test_example_configs_are_valid():
    from handfit.train.config import load_config

    for name in ("tiny_cpu", "default", "gpu", "mixed_photos", "photos_finetune"):
        cfg = load_config(REPO / "examples" / "configs" / f"{name}.yaml")
        assert cfg.optim.steps > 0


def cli(args):
    from click.testing import CliRunner

    from handfit.cli import main

    return CliRunner().invoke(main, ["train", *map(str, args), "-q"])


def test_bad_config_exits_2(tmp_path):
    r = cli([write(tmp_path, {"optim": {"lr": -1}})])
    assert r.exit_code == 2 and "optim.lr" in r.output


@pytest.mark.slow
def test_resume_without_checkpoint_is_a_usage_error(tmp_path):
    r = cli([write(tmp_path), "--out", tmp_path / "none", "--resume"])
    assert r.exit_code == 2 and "checkpoint" in r.output


def test_init_starts_from_given_weights(tmp_path):
    """init: the trainer's model starts as the given prior file; a prior of
    another size is a usage error naming init."""
    from handfit.texture.prior import PriorConfig, TexturePrior, save_prior
    from handfit.train.trainer import Trainer, prior_config

    cfg = parse_config(TINY)
    torch.manual_seed(123)
    src = TexturePrior(prior_config(cfg))
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_prior(src, tmp_path / "start.pt")
    t = Trainer(parse_config({**TINY, "init": str(tmp_path / "start.pt")}), tmp_path / "run", progress=False)
    for k, v in src.state_dict().items():
        assert torch.equal(t.net.state_dict()[k], v), k
    save_prior(TexturePrior(PriorConfig(dim=8, heads=2, layers=1, cross_layers=1, grid=4, freqs=2, channels=(4,),
                                        size=16)), tmp_path / "other.pt")
    r = cli([write(tmp_path, {**TINY, "init": str(tmp_path / "other.pt")}), "--out", tmp_path / "bad"])
    assert r.exit_code == 2 and "init" in r.output
    r = cli([write(tmp_path, {**TINY, "init": str(tmp_path / "missing.pt")}), "--out", tmp_path / "bad2"])
    assert r.exit_code == 2 and "init" in r.output


@pytest.mark.slow
def test_kill_and_resume_reaches_the_same_final_step_and_weights(tmp_path):
    """A CLI run killed with SIGKILL after a checkpoint, then resumed, ends
    where an uninterrupted run ends: same step, same weights."""
    cfg = write(tmp_path, {**TINY, "optim": {**TINY["optim"], "steps": 30}})
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "handfit", "train", str(cfg), "--out", str(out), "-q"],
                            env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = out / "checkpoint.pt"

    def checkpoint_step():
        try:
            return torch.load(ck, weights_only=True)["step"] if ck.is_file() else -1
        except Exception:  # noqa: BLE001 - not there yet
            return -1

    # Kill as soon as a checkpoint past step 8 is on disk (polled: no fixed sleep window), before
    # anything else competes with the run for the CPU.
    deadline = time.time() + 600
    try:
        while proc.poll() is None and checkpoint_step() < 8:
            assert time.time() < deadline, "no checkpoint at step >= 8 within 600 s"
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed"
    finally:
        proc.kill()
        proc.wait()
    killed_at = checkpoint_step()
    assert 8 <= killed_at < 30, killed_at  # (if this fails the run finished before the kill: raise steps)
    # The uninterrupted reference run, in this process.
    r = cli([cfg, "--out", tmp_path / "ref"])
    assert r.exit_code == 0, r.output
    r = cli([cfg, "--out", out, "--resume"])
    assert r.exit_code == 0, r.output
    a = torch.load(ck, weights_only=True)
    b = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 30
    for k in a["model"]:  # same batches, same RNG, same optimiser state: the same weights
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k
    assert (out / "loss.png").is_file() and (out / "texture_prior.pt").is_file()
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert max(steps) == 30


@pytest.mark.slow
def test_two_ddp_ranks_hold_equal_parameters(tmp_path):
    """torchrun-style: two CPU processes (gloo), one step each on different batches."""
    cfg = write(tmp_path, {**TINY, "optim": {**TINY["optim"], "steps": 1}})
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys, torch\n"
        "from handfit.train.config import load_config\n"
        "from handfit.train.trainer import Trainer\n"
        f"t = Trainer(load_config({str(cfg)!r}), {str(tmp_path / 'ddp')!r}, progress=False)\n"
        "t.run()\n"
        "torch.save({k: v.detach().clone() for k, v in t.net.state_dict().items()},\n"
        f"           {str(tmp_path)!r} + f'/rank{{t.rank}}.pt')\n"
        "b = t.batch(0)\n"
        f"torch.save(b['rgb'], {str(tmp_path)!r} + f'/batch{{t.rank}}.pt')\n")
    procs = []
    for rank in range(2):
        e = dict(env(), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(29500 + os.getpid() % 1000))
        procs.append(subprocess.Popen([sys.executable, str(script)], env=e, cwd=REPO, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    b0, b1 = (torch.load(tmp_path / f"batch{r}.pt", weights_only=True) for r in range(2))
    assert b0.shape != b1.shape or not torch.equal(b0, b1)  # the ranks saw different data...
    init = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["step"] == 1
    assert init
    for k in r0:  # ...yet hold the same parameters after the step
        assert torch.equal(r0[k], r1[k]), k


def test_fresh_run_drops_stale_files_and_resume_trims_the_log(tmp_path, monkeypatch):
    from handfit.train.trainer import Trainer

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = parse_config(TINY)
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"an old run's")
    (out / "log.jsonl").write_text('{"step": 7}\n')
    t = Trainer(cfg, out, progress=False, log=lambda m: None)
    assert not (out / "checkpoint.pt").exists() and not (out / "log.jsonl").exists()
    t.step = 4
    t.save()
    lines = [{"step": 0, "val_total": 1.0}, {"step": 2}, {"step": 4}, {"step": 4, "val_total": 0.5}, {"step": 6},
             {"step": 8}]
    (out / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 1')
    r = Trainer(cfg, out, resume=True, progress=False, log=lambda m: None)
    assert r.step == 4
    assert [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()] == lines[:4]


def test_photo_cache_decodes_each_video_once_and_skips_broken_ones(tmp_path, monkeypatch):
    av = pytest.importorskip("av")
    import numpy as np

    from handfit.train import data

    src = tmp_path / "media"
    src.mkdir()
    with av.open(str(src / "clip.mp4"), "w") as c:            # frame i has brightness 10*i
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    (src / "broken.mp4").write_bytes(b"\0" * 64)
    seen = []

    def fake_fit(rgb, dense=True):
        seen.append(round(float(rgb.mean()) / 10))
        return [{"side": "right", "K": torch.eye(3), "vertices": torch.zeros(4, 3), "kp2d": torch.zeros(21, 2)}]

    opens = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **kw: opens.append(a[0]) or real_open(*a, **kw))
    monkeypatch.setattr(data, "fit_hands", fake_fit)
    files = data.photo_cache(src, tmp_path / "cache", stride=3, progress=False)
    assert seen == [0, 3, 6, 9] and len(files) == 4                 # the right frames, each fitted once
    assert sum(o.endswith("clip.mp4") for o in opens) == 2          # listed once, decoded once
    assert [torch.load(f, weights_only=True)["frame"] for f in files] == [0, 3, 6, 9]
    opens.clear()
    assert data.photo_cache(src, tmp_path / "cache", stride=3, progress=False) == files and seen == [0, 3, 6, 9]


def test_ddp_group_waits_long_enough_for_the_photo_cache(monkeypatch):
    """The other ranks wait in a barrier while rank 0 fits the photo cache: hours, not the default minutes."""
    import datetime

    import torch.distributed as dist

    from handfit.train.trainer import Trainer

    got = {}

    class Stop(Exception):
        pass

    def init(backend, **kw):
        got.update(kw, backend=backend)
        raise Stop

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", init)
    with pytest.raises(Stop):
        Trainer(parse_config(TINY), "unused", progress=False)
    assert got["backend"] == "gloo" and got.get("timeout", datetime.timedelta(0)) >= datetime.timedelta(hours=4)
