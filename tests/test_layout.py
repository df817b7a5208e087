"""The layout rules of the package (docs/ARCHITECTURE.md): small modules, no import cycles, no bench imports,
and one owner of the sampler's position. Static checks over the source, so a regression fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jepa_fast
from jepa_fast.data.sampler import Sampler

PKG = Path(jepa_fast.__file__).parent
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module this one imports, at the top or inside functions (both can close a cycle at run time)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(name.split(".")[:-node.level] + [node.module])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)
    return found


def test_no_module_is_over_the_size_limit():
    big = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert not {n: k for n, k in big.items() if k > MAX_LINES}, big


def test_no_import_cycles_and_no_bench_imports():
    mods = _modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        imported = _imports(name, path, known)
        assert not any(i == "bench" or i.startswith("bench.") for i in imported), f"{name} imports bench"
        graph[name] = {i for i in imported if i in known and i != name}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_only_the_sampler_changes_its_position():
    s = Sampler(10, 2)
    with pytest.raises(AttributeError):
        s.step = 3  # read-only from outside
    with pytest.raises(AttributeError):
        s.epoch = 1
    offenders = []
    for name, path in _modules().items():
        if name == "jepa_fast.data.sampler":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AugAssign | ast.AnnAssign) else []
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Attribute) and sub.attr in ("_epoch", "_step"):
                        offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


def test_sampler_moves_only_as_batches_are_handed_out():
    s = Sampler(10, 3, seed=1)  # 3 steps per epoch
    plans = list(s.plans())
    assert [p.step for p in plans] == [0, 1, 2] and s.position == (0, 0)  # planning is pure
    it = s.consume(((p.epoch, p.step), p) for p in plans)
    next(it)
    assert s.position == (0, 1)
    next(it), next(it)
    assert s.position == (1, 0)  # after the epoch's last batch: the next epoch's start
    with pytest.raises(RuntimeError, match="sampler is at"):
        next(s.consume([((0, 2), "stale")]))
    # DALI's view: a pipeline started mid-epoch counts its own epochs and iterations
    assert s.plan_at((0, 1), 0, 1).step == 2 and s.plan_at((0, 1), 0, 2) is None
    assert (s.plan_at((0, 1), 1, 0).epoch, s.plan_at((0, 1), 1, 0).step) == (1, 0)


LAYERS = {
    # the store reader knows nothing of sampling or augmentation: loaders execute plans (data/batch.py)
    "jepa_fast.data.reader": ("jepa_fast.data.sampler", "jepa_fast.data.batch", "jepa_fast.data.loader",
                              "jepa_fast.data.dali"),
    # the model owns its input path and knows nothing of stores or loaders
    "jepa_fast.model": ("jepa_fast.data",),
    # metrics log numbers; the FLOP count belongs with the model, the config helpers with the config
    "jepa_fast.metrics": ("jepa_fast.model", "jepa_fast.train"),
    "jepa_fast.checkpoint": ("jepa_fast.metrics", "jepa_fast.train"),
    # what a dataset is: known to everything, knowing nothing above it
    "jepa_fast.spec": ("jepa_fast.data", "jepa_fast.model", "jepa_fast.train", "jepa_fast.probe", "jepa_fast.config"),
    # the probe protocol knows no command line, files or plots (probe_report does)
    "jepa_fast.probe": ("jepa_fast.probe_report", "jepa_fast.viz", "jepa_fast.cli", "jepa_fast.atomic"),
    # recorders of other environments only write files the packer reads: the core never imports them
    "jepa_fast.data.pack": ("jepa_fast.envs",),
    "jepa_fast.train": ("jepa_fast.envs", "jepa_fast.probe"),
}


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_lower_layers_do_not_import_higher_ones(module):
    mods = _modules()
    imported = _imports(module, mods[module], set(mods))
    bad = sorted(i for i in imported for f in LAYERS[module] if i == f or i.startswith(f + "."))
    assert not bad, f"{module} imports {bad}"
