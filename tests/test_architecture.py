"""The package's layering, checked from its source: no import circle, no import from a lower
floor to a higher one, files a reader can hold in their head, run files named in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "osteolightning"

#: Floors, bottom to top: a module may import from its own floor and the ones below only.
FLOORS: list[tuple[str, ...]] = [
    ("osteolightning.errors", "osteolightning.utils", "osteolightning.backbones"),
    ("osteolightning.data", "osteolightning.metrics"),
    ("osteolightning.models", "osteolightning.callbacks"),
    ("osteolightning.ensemble", "osteolightning.selection"),
    # entry points: they compose, instantiate and run
    (
        "osteolightning.train",
        "osteolightning.reproduce",
        "osteolightning.segment",
        "osteolightning.evaluate",
        "osteolightning.predict",
        "osteolightning.explain",
        "osteolightning.export",
        "osteolightning.ensemble.cli",
        "osteolightning.ensemble.evaluate",
        "osteolightning.ensemble.__main__",
        "osteolightning.data.cli",
        "osteolightning.data.__main__",
    ),
]
#: The largest a module may grow (STYLE.md: "files stay a few hundred lines").
MAX_LINES = 600
#: Run-directory file names: spelled only in osteolightning/utils/rundir.py.
RUN_FILES = (
    "metrics.json",
    "predictions.csv",
    "val_predictions.csv",
    "members.json",
    "splits.csv",
    "skipped.csv",
    "label_conflicts.csv",
    "versions.json",
    "error.json",
    "reproduction.json",
    ".osteo_run.json",
    "last.ckpt",
    "test_metrics.csv",
    ".osteo_leaderboard.json",
    "saliency.csv",
    "saliency_grid.png",
    "MODEL_CARD.md",
    "export.json",
    ".osteo_job.json",
    "optuna_journal.log",
    "optimization_results.yaml",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module → package modules it imports, function-level imports included."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floor(module: str) -> int:
    """The floor of ``module``: the highest floor with a prefix that matches it."""
    best = -1
    for level, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(f"{p}.") for p in prefixes):
            best = max(best, level)
    return best


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_inside_the_package():
    assert cycles(import_graph()) == []


def test_every_module_has_a_floor():
    assert [m for m in _modules() if m != "osteolightning" and floor(m) < 0] == []


def test_no_import_from_a_lower_floor_to_a_higher_one():
    upward = [
        f"{module} (floor {floor(module)}) imports {dep} (floor {floor(dep)})"
        for module, deps in import_graph().items()
        for dep in sorted(deps)
        if module != "osteolightning" and floor(dep) > floor(module)
    ]
    assert upward == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_module_stays_short(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_run_file_names_are_spelled_in_one_module():
    owner = PACKAGE / "utils" / "rundir.py"
    pattern = re.compile("|".join(rf"[\"']{re.escape(name)}[\"']" for name in RUN_FILES))
    spelled = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != owner
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert spelled == []
    assert all(f'"{name}"' in owner.read_text() or name in owner.read_text() for name in RUN_FILES)
