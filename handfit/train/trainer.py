"""``handfit train CONFIG``: train the texture prior end to end through the renderer.

Each step draws a batch of views (handfit.train.data), hides a contiguous
part of each visible hand from the input samples, predicts the UV texture
from the rest, renders it on the hand's mesh in the view's camera (the
differentiable texture lookup of handfit.render.mesh, times the view's shading)
and compares it with the photo:

    loss = photo     · robust colour error over the given visible pixels
         + structure · image-gradient error over the visible hand
         + masked    · colour error over the hidden pixels (robust, or plain L1:
                       ``loss.masked_norm``; L1 is what the completion
                       benchmark scores, and it pulls towards the median
                       colour where the robust error picks the mode)
         + uv        · L1 against the true texture (synthetic views only;
                       texels no given sample touches count 4x)

Runs on one process or under ``torchrun`` (DistributedDataParallel; gloo on
the CPU, nccl on CUDA); rank 0 writes. Every ``checkpoint_every`` steps
OUT/checkpoint.pt is written atomically with the model, optimiser,
scheduler, step and RNG state; ``--resume`` continues from it to the same
final step. Batches are drawn from a generator seeded by (seed, rank, step),
so a resumed run sees the batches the uninterrupted one would have.
OUT also gets log.jsonl, loss.png and texture_prior.pt (the weights alone).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .. import render as R
from ..cache import atomic_save
from ..fitting import losses as L
from ..io import jsonfile
from ..texture.prior import PriorConfig, TexturePrior, save_prior
from .config import TrainConfig
from .data import Views, make_batch, photo_cache, photo_views, synthetic_views

VAL_SEED = 10_000_019  # synthetic validation views are drawn far from the training seeds
# Collective timeout of the process group. The other ranks wait in a barrier while rank 0 fits the photo
# cache (seconds per photo, hours for a large folder); the default (10-30 min) would kill them there.
DDP_TIMEOUT_S = 12 * 3600


def prior_config(cfg: TrainConfig) -> PriorConfig:
    m = cfg.model
    return PriorConfig(dim=m.dim, heads=m.heads, layers=m.layers, cross_layers=m.cross_layers, grid=m.grid,
                       freqs=m.freqs, channels=tuple(m.channels), size=m.size)


def losses(net, batch: dict, cfg: TrainConfig) -> dict:
    """Loss terms (scalars) of one batch; ``total`` is their weighted sum."""
    w = cfg.loss
    tex = net(batch["uv"], batch["rgb"], batch["conf"], batch["cos"], batch["mask"])   # (B,T,T,3)
    render = R.sample_texture(tex, batch["uv_image"]) * batch["shading"]                # (B,S,S,3)
    photo, seen, hidden = batch["photo"], batch["seen"], batch["hidden"]
    visible = seen + hidden
    out = {
        "photo": L.robust_photometric_loss(render, photo, seen).mean(),
        "structure": L.gradient_loss(render, photo, visible).mean(),
        "hidden_l1": ((render - photo).abs().mean(-1) * hidden).sum() / hidden.sum().clamp(min=1),
    }
    if w.masked_norm == "l1":
        out["masked"] = (((render - photo).abs().mean(-1) * hidden).sum((1, 2))
                         / hidden.sum((1, 2)).clamp(min=1.0)).mean()
    else:
        out["masked"] = L.robust_photometric_loss(render, photo, hidden).mean()
    has = batch["has_texture"].to(tex.dtype)
    # Unseen texels count 4x: filling them is the prior's job (seen ones come from the photo in fit).
    wuv = 1 + 3 * batch["unseen"]
    uv_err = ((tex - batch["texture"]).abs().mean(-1) * wuv).sum((1, 2)) / wuv.sum((1, 2))
    out["uv"] = (uv_err * has).sum() / has.sum().clamp(min=1)
    out["total"] = w.photo * out["photo"] + w.structure * out["structure"] + w.masked * out["masked"] + w.uv * out["uv"]
    return out


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, resume: bool = False, progress: bool = True, log=print):
        self.cfg, self.out, self.log_fn = cfg, Path(out), log
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if cfg.device.startswith("cuda") and torch.cuda.is_available() else "gloo"
            from datetime import timedelta

            dist.init_process_group(backend, timeout=timedelta(seconds=DDP_TIMEOUT_S))
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = self._device()
        self.progress = progress and self.rank == 0
        torch.manual_seed(cfg.seed)
        self.net = TexturePrior(prior_config(cfg))
        if cfg.init and not resume:  # fine-tuning: a resumed run's checkpoint holds the weights
            self._init_from(cfg.init)
        self.net = self.net.to(self.device)
        self.model = self.net
        if self.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, weight_decay=o.weight_decay)

        def lr_at(step):
            warm = min(1.0, (step + 1) / max(1, o.warmup))
            if o.schedule == "constant":
                return warm
            return warm * 0.5 * (1 + math.cos(math.pi * min(step, o.steps) / o.steps))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_at)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and self.device.type == "cuda")
        self.step = 0
        self.ckpt = self.out / "checkpoint.pt"
        if resume:
            self._load()
        elif self.rank == 0:
            # A fresh run: an old run's log and checkpoint would mix with this one's (a --resume after
            # this run dies before its first checkpoint would load the old run's).
            for stale in (self.out / "log.jsonl", self.ckpt):
                if stale.exists():
                    stale.unlink()

    def _init_from(self, path):
        from ..errors import UsageError

        if not Path(path).is_file():
            raise UsageError(f"init: no prior file at {path}")
        ck = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ck.get("prior_config", ck.get("config"))
        if cfg != _prior_cfg_dict(self.net):
            raise UsageError(f"init: {path} holds a model of another size than the config's")
        self.net.load_state_dict({k: v.float() for k, v in ck["model"].items()})

    def _device(self) -> torch.device:
        d = self.cfg.device
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        if d.startswith("cuda"):
            if not torch.cuda.is_available():
                from ..errors import UsageError

                raise UsageError("device: cuda was asked for, but torch sees no CUDA GPU")
            if d == "cuda":
                d = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return torch.device(d)

    # -- data --------------------------------------------------------------------------
    def build_data(self):
        """Training views per source, and the validation views."""
        from ..models import load_model

        cfg, d = self.cfg, self.cfg.data
        model = load_model("anny", side="right", device=torch.device("cpu"), dtype=torch.float32)
        self.sources, weights = [], []
        val = []
        for i, s in enumerate(d.sources):
            if s.kind == "synthetic":
                v = synthetic_views(model, s.scenes, seed=cfg.seed * 1000 + i, size=d.crop, tex_size=cfg.model.size,
                                    deshade=d.deshade, progress=self.progress)
            else:
                cache = Path(d.cache) if d.cache else self.out / "photo_cache"
                # Every rank would fit the same photos: rank 0 builds the cache, the others wait.
                if self.rank == 0:
                    photo_cache(s.path, cache, s.dense, s.stride, s.max_items or None, progress=self.progress)
                if self.distributed:
                    dist.barrier()
                files = photo_cache(s.path, cache, s.dense, s.stride, s.max_items or None, progress=False)
                v = photo_views(files, size=d.crop, tex_size=cfg.model.size)
                if d.val_photos:  # the last ones are held out
                    k = min(d.val_photos, len(v) // 2)
                    val.append(_subset(v, range(len(v) - k, len(v))))
                    v = _subset(v, range(len(v) - k))
            if len(v):
                self.sources.append(v)
                weights.append(s.weight)
        if not self.sources:
            from ..errors import UsageError

            raise UsageError("data.sources: no training views (photo folders without fittable hands?)")
        self.weights = torch.tensor(weights, dtype=torch.float64)
        if d.val_synthetic:
            val.append(synthetic_views(model, d.val_synthetic, seed=VAL_SEED, size=d.crop, tex_size=cfg.model.size,
                                       deshade=d.deshade))
        self.val = Views.cat(val) if val else None
        if self.val is not None:  # fixed hidden parts, so validation numbers compare across steps
            g = torch.Generator().manual_seed(VAL_SEED)
            idx = torch.arange(len(self.val))
            self.val_batches = [make_batch(self.val, idx[i:i + 8], g, tuple(d.hide), d.max_tokens, jitter=0.0)
                                for i in range(0, len(idx), 8)]

    def batch(self, step: int) -> dict:
        d, o = self.cfg.data, self.cfg.optim
        g = torch.Generator().manual_seed(((self.cfg.seed * 1_000_003 + self.rank) * 1_000_003 + step) % (2 ** 63))
        which = torch.multinomial(self.weights, o.batch_size, replacement=True, generator=g)
        parts = []
        for s, views in enumerate(self.sources):
            n = int((which == s).sum())
            if n:
                idx = torch.randint(len(views), (n,), generator=g)
                parts.append(make_batch(views, idx, g, tuple(d.hide), d.max_tokens, d.jitter))
        return _to(_cat_batches(parts), self.device)

    # -- checkpoints -------------------------------------------------------------------
    def _state(self) -> dict:
        return {"kind": "texture_prior_checkpoint", "step": self.step, "config": self.cfg.to_dict(),
                "prior_config": _prior_cfg_dict(self.net), "model": self.net.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def save(self):
        if self.rank == 0:
            atomic_save(self._state(), self.ckpt, torch.save)
            save_prior(self.net, self.out / "texture_prior.pt", {"step": self.step})

    def _load(self):
        from ..errors import UsageError

        if not self.ckpt.is_file():
            raise UsageError(f"--resume: no checkpoint at {self.ckpt}")
        ck = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        if ck["prior_config"] != _prior_cfg_dict(self.net):
            raise UsageError(f"--resume: {self.ckpt} holds a model of another size than the config's")
        self.net.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng_cpu"])
        if ck["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng_cuda"])
        self.step = int(ck["step"])
        if self.rank == 0:
            _trim_log(self.out / "log.jsonl", self.step)

    # -- loop --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        if self.val is None:
            return {}
        self.net.eval()
        sums, n = {}, 0
        for b in self.val_batches:
            b = _to(b, self.device)
            with torch.autocast(self.device.type, enabled=self.scaler.is_enabled()):
                terms = losses(self.net, b, self.cfg)
            k = b["photo"].shape[0]
            for key, v in terms.items():
                sums[key] = sums.get(key, 0.0) + float(v) * k
            n += k
        self.net.train()
        return {f"val_{k}": v / n for k, v in sums.items()}

    def _record(self, entry: dict):
        if self.rank != 0:
            return
        with open(self.out / "log.jsonl", "a") as f:
            f.write(jsonfile.dumps(entry) + "\n")

    def run(self) -> dict:
        from tqdm import tqdm

        cfg, o = self.cfg, self.cfg.optim
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.build_data()
        if self.step == 0:
            v = self.validate()
            self._report(v)
        bar = tqdm(total=o.steps, initial=self.step, desc="train texture prior", disable=not self.progress,
                   file=sys.stderr, dynamic_ncols=True)
        self.net.train()
        t0, last = time.time(), {}
        while self.step < o.steps:
            batch = self.batch(self.step)
            with torch.autocast(self.device.type, enabled=self.scaler.is_enabled()):
                terms = losses(self.model, batch, cfg)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(terms["total"]).backward()
            self.scaler.unscale_(self.opt)
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), o.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            self.step += 1
            last = {k: float(v.detach()) for k, v in terms.items()}
            bar.update(1)
            bar.set_postfix(loss=f"{last['total']:.4f}", hidden=f"{last['hidden_l1']:.4f}")
            if self.step % cfg.log_every == 0 or self.step == o.steps:
                self._record({"step": self.step, "lr": self.sched.get_last_lr()[0],
                              "samples_per_s": self.step_rate(t0), **last})
            ckpt = self.step % cfg.checkpoint_every == 0 or self.step == o.steps
            if ckpt or self.step % cfg.val_every == 0:
                v = self.validate()
                if ckpt:
                    self.save()
                self._report(v, bar)
        bar.close()
        if self.distributed:
            dist.barrier()
        return last

    def step_rate(self, t0) -> float:
        return round(self.cfg.optim.batch_size * self.world * max(1, self.step) / max(time.time() - t0, 1e-6), 2)

    def _report(self, v: dict, bar=None):
        if self.rank != 0 or not v:
            return
        self._record({"step": self.step, **v})
        msg = (f"step {self.step}: val loss {v['val_total']:.4f}, hidden-pixel L1 {v['val_hidden_l1']:.4f}, "
               f"uv L1 {v['val_uv']:.4f}")
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            self.log_fn(msg)
        plot_log(self.out / "log.jsonl", self.out / "loss.png")


def _trim_log(log: Path, step: int):
    """Drop the log's entries after ``step`` (logged after the last checkpoint by a run that was then
    killed): the resumed run logs those steps again. Torn lines go too. Rewritten atomically."""
    if not log.is_file():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("step", 0) <= step:
            keep.append(line + "\n")
    tmp = log.with_name(log.name + ".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, log)


def plot_log(log: Path, png: Path):
    """Loss curves (training total, validation total and hidden-pixel L1) from log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = {}, {}
    for line in Path(log).read_text().splitlines():
        e = json.loads(line)
        if "total" in e:
            train[e["step"]] = e["total"]
        if "val_total" in e:
            val[e["step"]] = (e["val_total"], e["val_hidden_l1"])
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        s = sorted(train)
        ax.plot(s, [train[k] for k in s], label="train loss", lw=1)
    if val:
        s = sorted(val)
        ax.plot(s, [val[k][0] for k in s], "o-", label="val loss")
        ax.plot(s, [val[k][1] for k in s], "s--", label="val hidden-pixel L1")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png)


def _prior_cfg_dict(net) -> dict:
    from dataclasses import asdict

    d = asdict(net.config)
    d["channels"] = list(d["channels"])
    return d


def _subset(v: Views, idx) -> Views:
    idx = torch.as_tensor(list(idx), dtype=torch.long)
    return Views(v.photo[idx], v.uv[idx], v.shading[idx], v.weight[idx], v.cos[idx], v.texture[idx],
                 v.has_texture[idx], [v.source[i] for i in idx.tolist()])


def _cat_batches(parts: list) -> dict:
    if len(parts) == 1:
        return parts[0]
    N = max(p["mask"].shape[1] for p in parts)
    out = {}
    for k in parts[0]:
        xs = [p[k] for p in parts]
        if k in ("uv", "rgb", "conf", "cos", "mask"):  # padded sample sets: pad to the longest
            xs = [torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, N - x.shape[1])) for x in xs]
        out[k] = torch.cat(xs)
    return out


def _to(b: dict, device) -> dict:
    return {k: v.to(device) for k, v in b.items()}


def train(config_path, out=None, resume: bool = False, progress: bool = True) -> Path:
    """Train as ``config_path`` says; -> the output folder."""
    from .config import load_config

    cfg = load_config(config_path)
    out = Path(out) if out else Path("train_out") / Path(config_path).stem
    t = Trainer(cfg, out, resume=resume, progress=progress)
    try:
        t.run()
        if t.rank == 0:
            train_others(cfg, out)
    finally:
        if t.distributed and dist.is_initialized():
            dist.destroy_process_group()
    return out


def train_others(cfg: TrainConfig, out: Path):
    """The optional ``also`` section: the keypoint regressor and calibration, into OUT
    (their own trainers, so the files match what ``make weights`` writes)."""
    if cfg.also.regressor_steps:
        from .regressor import main as regressor_main

        regressor_main(["--model", "anny", "--steps", str(cfg.also.regressor_steps), "--seed", str(cfg.seed),
                        "--out", str(out / "regressor_anny.pt")])
    if cfg.also.calibrate_scenes:
        from .calibrate import main as calibrate_main

        calibrate_main(["--scenes", str(cfg.also.calibrate_scenes), "--out", str(out / "keypoints_anny.pt")])
