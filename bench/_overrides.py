"""``--set NAME=VALUE`` overrides of the dense stage, shared by the benchmarks."""

from __future__ import annotations


def _value(v: str):
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def add_set_option(ap) -> None:
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a dense-stage weight (handfit.options.DenseWeights) or a "
                         "DenseStage setting, e.g. --set silhouette=0 for an ablation; repeatable")


def dense_stage(sets: list[str], **fixed):
    """DenseStage with ``NAME=VALUE`` strings applied (weights and stage fields alike)."""
    from handfit.options import DenseStage, DenseWeights

    pairs = {}
    for kv in sets:
        if "=" not in kv:
            raise SystemExit(f"--set wants NAME=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        pairs[k] = _value(v)
    wnames, snames = set(DenseWeights.__dataclass_fields__), set(DenseStage.__dataclass_fields__) - {"weights"}
    unknown = set(pairs) - wnames - snames
    if unknown:
        raise SystemExit(f"unknown dense-stage names {sorted(unknown)}; weights: {sorted(wnames)}, "
                         f"settings: {sorted(snames)}")
    weights = DenseWeights(**{k: v for k, v in pairs.items() if k in wnames})
    return DenseStage(weights=weights, **{**fixed, **{k: v for k, v in pairs.items() if k in snames}})
