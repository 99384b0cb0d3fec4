"""The import graph of handfit, read from the source with ``ast`` (nothing is imported).

Every ``import`` counts, also those inside functions. ``from pkg import sub``
is an edge to ``pkg.sub`` when ``sub`` is a module, else to ``pkg``; parent
packages are implicit, not edges (the convention of tools/imports.py).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "handfit"

# The fitting stages: only the fitting pipeline itself (and train/, which builds their data) may
# import them; everything else goes through handfit.api.
FITTING_INTERNALS = ("init", "keypoint", "adam", "dense", "appearance", "side", "starts", "temporal")


def _modules(root: Path = ROOT) -> dict:
    """{dotted module name: (file, is_package)} of every .py file under ``root``."""
    mods = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (f, is_pkg)
    return mods


def _imports(name: str, f: Path, is_pkg: bool, mods: dict):
    """Yield (line, [dotted names one import statement of module ``name`` may reach])."""
    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            yield node.lineno, [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
            yield node.lineno, subs if len(subs) == len(node.names) else [base] + subs


def import_graph(root: Path = ROOT) -> dict:
    """{module: set of handfit modules it imports}."""
    mods = _modules(root)
    graph = {m: set() for m in mods}
    for m, (f, is_pkg) in mods.items():
        for _, targets in _imports(m, f, is_pkg, mods):
            graph[m].update(t for t in targets if t in mods and t != m)
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(old)
    return sorted(out)


def _cycle_text(comp: list, graph: dict) -> str:
    edges = ", ".join(f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp)
    return f"{' <-> '.join(comp)}  ({edges})"


def test_the_graph_sees_function_level_and_from_imports(tmp_path):
    pkg = tmp_path / "handfit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("X = 1\n")
    (pkg / "sub" / "low.py").write_text("def f():\n    from ..top import g\n")
    (pkg / "top.py").write_text("from .sub import low, X\n\ndef g():\n    pass\n")
    graph = import_graph(pkg)
    assert graph["handfit.top"] == {"handfit.sub", "handfit.sub.low"}
    assert graph["handfit.sub.low"] == {"handfit.top"}
    assert cycles(graph) == [["handfit.sub.low", "handfit.top"]]


def test_no_import_cycles():
    """No two modules of handfit import each other, directly or through others (function-level
    imports included): each layer imports only from those below it."""
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_cycle_text(c, graph) for c in found)


def test_fitting_stages_are_imported_only_by_the_fitting_pipeline():
    """Outside handfit/fitting/ and handfit/train/, nothing imports the stage modules (init,
    keypoint, adam, dense, appearance, side, starts, temporal; nor anything inside them): they are
    reached through handfit.fitting.pipeline."""
    mods = _modules()
    banned = tuple(f"handfit.fitting.{n}" for n in FITTING_INTERNALS)
    bad = []
    for m, (f, is_pkg) in mods.items():
        if m.startswith(("handfit.fitting.", "handfit.train.")) or m in ("handfit.fitting", "handfit.train"):
            continue
        for line, targets in _imports(m, f, is_pkg, mods):
            hit = sorted({t for t in targets for b in banned if t == b or t.startswith(b + ".")})
            if hit:
                bad.append((str(f.relative_to(ROOT.parent)), line, ", ".join(hit)))
    assert not bad, "fitting internals imported outside the fitting pipeline:\n" + "\n".join(
        f"{f}:{line}: {hit}" for f, line, hit in sorted(bad))


def test_only_handfit_train_command_imports_train():
    """handfit/train/ (building and learning shipped data) is never imported by a fit: only the
    ``handfit train`` command (handfit/cli/train.py) reaches it."""
    mods = _modules()
    bad = []
    for m, (f, is_pkg) in mods.items():
        if m.startswith("handfit.train.") or m in ("handfit.train", "handfit.cli.train"):
            continue
        for line, targets in _imports(m, f, is_pkg, mods):
            if any(t == "handfit.train" or t.startswith("handfit.train.") for t in targets):
                bad.append(f"{f.relative_to(ROOT.parent)}:{line}")
    assert not bad, "handfit.train imported outside `handfit train`:\n" + "\n".join(sorted(bad))


def test_fitting_never_calls_the_landmark_model():
    """handfit/fitting/ gets its hands with their evidence (handfit/detect/evidence.py): it never asks
    for a detector nor runs the landmark model itself, so photos, eval and videos fit the same evidence."""
    import re

    bad = [f"{f.relative_to(ROOT.parent)}:{i}: {line.strip()}"
           for f in sorted((ROOT / "fitting").rglob("*.py"))
           for i, line in enumerate(f.read_text().splitlines(), 1)
           if re.search(r"\.landmarks\(|\.detector\(|\.detect\(|\.evidence\(", line)]
    assert not bad, "the landmark model reached from fitting/:\n" + "\n".join(bad)
