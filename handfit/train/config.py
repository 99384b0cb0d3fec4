"""The training config: one YAML file, validated against these dataclasses.

Every key is checked: an unknown key, a wrong type or an out-of-range value
raises :class:`ConfigError` naming it (``optim.lr: expected a number, got 'x'``).
See examples/configs/*.yaml for commented examples.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError


class ConfigError(UsageError):
    """A bad training config (exit code 2)."""


@dataclass
class ModelCfg:
    dim: int = 128
    heads: int = 4
    layers: int = 3
    cross_layers: int = 2
    grid: int = 16
    freqs: int = 8
    channels: list = field(default_factory=lambda: [48, 32, 16])
    size: int = 256


@dataclass
class SourceCfg:
    kind: str = "synthetic"     # synthetic | photos
    weight: float = 1.0         # share of each batch drawn from this source
    scenes: int = 200           # synthetic: number of views in the pool
    path: str = ""              # photos: a folder of photos and videos
    dense: bool = True          # photos: fit with the dense stage (else keypoints only); old name: appearance
    stride: int = 15            # photos: every stride-th video frame
    max_items: int = 0          # photos: at most this many photos/frames (0 = all)


@dataclass
class DataCfg:
    crop: int = 128             # side of the hand crops (pixels)
    max_tokens: int = 512       # samples (pooled texels) per hand given to the prior
    hide: list = field(default_factory=lambda: [0.2, 0.5])  # fraction of visible pixels hidden (lo, hi)
    jitter: float = 0.1         # colour gain augmentation (±)
    deshade: float = 0.5        # synthetic: share of views whose samples are divided by the true shading
    sources: list = field(default_factory=lambda: [SourceCfg()])
    val_synthetic: int = 16     # validation views (synthetic, seeds apart from training)
    val_photos: int = 0         # validation views taken off the photo sources (not trained on)
    cache: str = ""             # where photo fits are cached (default: OUT/photo_cache)


@dataclass
class LossCfg:
    photo: float = 1.0          # rendered texture vs photo over the given (visible) pixels
    structure: float = 0.5      # image-gradient term over the visible hand
    masked: float = 2.0         # rendered texture vs photo over the hidden pixels
    masked_norm: str = "robust"  # the hidden-pixel error: robust (saturating, as the photo term) | l1
    uv: float = 1.0             # synthetic: UV L1 against the true texture


@dataclass
class OptimCfg:
    steps: int = 2000
    batch_size: int = 8         # per process
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    schedule: str = "cosine"    # cosine | constant
    grad_clip: float = 1.0


@dataclass
class AlsoCfg:
    """Optional: retrain the other learned parts in the same run (0 = skip)."""

    regressor_steps: int = 0    # handfit.train.regressor
    calibrate_scenes: int = 0   # handfit.train.calibrate


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "cpu"         # cpu | cuda | auto
    amp: bool = False           # mixed precision (CUDA only)
    threads: int = 0            # torch CPU threads per process (0 = leave as is)
    init: str = ""              # start from these prior weights (a prior file or checkpoint; "" = random)
    checkpoint_every: int = 100
    val_every: int = 100        # validation also runs at every checkpoint and at the end
    log_every: int = 10
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    also: AlsoCfg = field(default_factory=AlsoCfg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RULES = {  # key -> (check, message)
    "device": (lambda v: v in ("cpu", "cuda", "auto") or str(v).startswith("cuda:"), "cpu, cuda or auto"),
    "source.kind": (lambda v: v in ("synthetic", "photos"), "synthetic or photos"),
    "optim.schedule": (lambda v: v in ("cosine", "constant"), "cosine or constant"),
    "loss.masked_norm": (lambda v: v in ("robust", "l1"), "robust or l1"),
    "data.hide": (lambda v: len(v) == 2 and 0 <= v[0] <= v[1] < 1, "[lo, hi] with 0 <= lo <= hi < 1"),
    "model.channels": (lambda v: len(v) >= 1 and all(isinstance(c, int) and c > 0 for c in v), "a list of positive ints"),
}
POSITIVE = {"optim.steps", "optim.batch_size", "optim.lr", "model.dim", "model.heads", "model.layers", "model.grid",
            "model.size", "data.crop", "data.max_tokens", "checkpoint_every", "val_every", "log_every",
            "source.scenes", "source.stride"}


def _holds(check, v) -> bool:
    """A rule's check; a value it cannot even compare (``["a", "b"]`` for numbers) fails it."""
    try:
        return bool(check(v))
    except (TypeError, ValueError, IndexError):
        return False


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    if cls is SourceCfg and "appearance" in raw:  # the dense stage's old name, still read
        if "dense" in raw:
            raise ConfigError(f"{where}.appearance: the old name of dense; give only dense")
        raw = {("dense" if k == "appearance" else k): v for k, v in raw.items()}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            raise ConfigError(f"{where + '.' if where else ''}{k}: unknown key (known: {', '.join(sorted(names))})")
    kw = {}
    for k, v in raw.items():
        key = f"{where}.{k}" if where else k
        t = hints[k]
        if dataclasses.is_dataclass(t):
            v = _build(t, v, key)
        elif k == "sources":
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{key}: expected a non-empty list of sources")
            v = [_build(SourceCfg, s, f"{key}[{i}]") for i, s in enumerate(v)]
        elif t is bool:
            if not isinstance(v, bool):
                raise ConfigError(f"{key}: expected true or false, got {v!r}")
        elif t is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{key}: expected an integer, got {v!r}")
        elif t is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{key}: expected a number, got {v!r}")
            v = float(v)
        elif t is str:
            if not isinstance(v, str):
                raise ConfigError(f"{key}: expected a string, got {v!r}")
        elif t is list:
            if not isinstance(v, list):
                raise ConfigError(f"{key}: expected a list, got {v!r}")
        rule = key if key in RULES else ("source." + k if "sources[" in key else None)
        if rule in RULES and not _holds(RULES[rule][0], v):
            raise ConfigError(f"{key}: expected {RULES[rule][1]}, got {v!r}")
        pos = "source." + k if "sources[" in key else key
        if pos in POSITIVE and not v > 0:
            raise ConfigError(f"{key}: must be positive, got {v!r}")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            raise ConfigError(f"{key}: must not be negative, got {v!r}")
        kw[k] = v
    return cls(**kw)


def parse_config(raw: dict) -> TrainConfig:
    """A validated TrainConfig from a parsed YAML mapping."""
    cfg = _build(TrainConfig, raw or {}, "")
    if cfg.model.dim % cfg.model.heads:
        raise ConfigError(f"model.heads: must divide model.dim ({cfg.model.dim}), got {cfg.model.heads}")
    for i, s in enumerate(cfg.data.sources):
        if s.kind == "photos" and not s.path:
            raise ConfigError(f"data.sources[{i}].path: a photos source needs a folder")
    return cfg


def load_config(path) -> TrainConfig:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw)
