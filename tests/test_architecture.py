"""The package's layering, checked from its source (``osteolightning/`` and the Hydra plugins in
``hydra_plugins/``): no import circle, no import from a lower floor to a higher one, files a
reader can hold in their head, run files named in one place and opened by the run contract
(``osteolightning/runs/``), ``utils/`` helpers only, and no module state shared across packages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "osteolightning"
#: Hydra's sweepers and launchers (a namespace package: Hydra scans it for plugins)
PLUGINS = REPO / "hydra_plugins"
SOURCES = (PACKAGE, PLUGINS)

#: Floors, bottom to top: a module may import from its own floor and the ones below only.
FLOORS: list[tuple[str, ...]] = [
    # helpers: typed errors, atomic files, logging, console, progress, config glue; the registry
    # of backbone facts (which the config resolvers read)
    ("osteolightning.errors", "osteolightning.utils", "osteolightning.backbones"),
    # the run contract: run-directory files, lifecycle, sweeps, model card, failures, checks
    ("osteolightning.runs",),
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
    # Hydra calls them; nothing in the package imports them
    ("hydra_plugins",),
]
#: The largest a module may grow (STYLE.md: "files stay a few hundred lines").
MAX_LINES = 600
#: Run-directory file names: spelled only in osteolightning/runs/rundir.py.
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


#: The run contract's package: outside it, no module opens a run file itself.
RUNS = PACKAGE / "runs"
#: Calls that open, read or write a file given a path (``open(p)``, ``p.read_text()``,
#: ``OmegaConf.load(p)``, ``yaml.safe_load(p.read_text())``, ``np.load(p)`` ...).
OPENERS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "load", "safe_load",
           "loadtxt", "read_csv", "savez", "savez_compressed", "save"}  # fmt: skip
#: (module, run-file constant): the files still opened outside runs/, each by its one reader or
#: writer; a new entry needs a reason (the run contract reads the others for everyone).
OPENED_OUTSIDE_RUNS = {
    # the resolved config Hydra saves, read back as a config (OmegaConf / YAML)
    ("osteolightning.ensemble.cli", "CONFIG"),
    ("osteolightning.ensemble.leaderboard.study", "CONFIG"),
    ("osteolightning.reproduce", "CONFIG"),
    # the segmentation callback writes its test masks; nothing reads them back
    ("osteolightning.callbacks.seg_evaluation", "TEST_MASKS"),
    # osteo-export copies the run's card (and its files) beside the exported model
    ("osteolightning.export", "MODEL_CARD"),
}
#: Modules that may import nothing from osteolightning but these (true helpers; the config
#: resolvers read the registry of backbone facts, itself a leaf over errors).
HELPERS = "osteolightning.utils"
HELPERS_MAY_IMPORT = ("osteolightning.errors", "osteolightning.utils", "osteolightning.backbones")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> list[Path]:
    return sorted(p for root in SOURCES for p in root.rglob("*.py"))


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in _sources()}


def package_of(module: str) -> str:
    """The package a module belongs to: ``osteolightning.<name>`` (a top-level module is its
    own) or ``hydra_plugins.<plugin>``."""
    return ".".join(module.split(".")[:2])


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


def test_the_plugins_are_checked_too():
    assert any(m.startswith("hydra_plugins.osteo_sweeps.") for m in import_graph())
    assert any(m.startswith("hydra_plugins.osteo_selection.") for m in import_graph())


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_stays_short(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_run_file_names_are_spelled_in_one_module():
    owner = RUNS / "rundir.py"
    pattern = re.compile("|".join(rf"[\"']{re.escape(name)}[\"']" for name in RUN_FILES))
    spelled = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in _sources()
        if path != owner
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert spelled == []
    assert all(f'"{name}"' in owner.read_text() or name in owner.read_text() for name in RUN_FILES)


def _run_files_named(node: ast.AST, bound: dict[str, set[str]]) -> set[str]:
    """The run-file constants (``rundir.SPLITS`` ...) that an expression names, directly or
    through a local name bound to a path built from one."""
    named: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            if sub.value.id == "rundir" and sub.attr.isupper():
                named.add(sub.attr)
        elif isinstance(sub, ast.Name) and sub.id in bound:
            named |= bound[sub.id]
    return named


def _scopes(tree: ast.Module) -> list[list[ast.stmt]]:
    """Each function's body, and the module's own statements."""
    bodies = [[s for s in tree.body if not isinstance(s, ast.FunctionDef | ast.ClassDef)]]
    bodies += [n.body for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    return bodies


def run_files_opened(path: Path) -> set[tuple[int, str]]:
    """``(line, constant)`` of every call in ``path`` that opens, reads or writes a file whose
    path is built from a run-file constant."""
    found: set[tuple[int, str]] = set()
    for body in _scopes(ast.parse(path.read_text())):
        module = ast.Module(body=body, type_ignores=[])
        bound: dict[str, set[str]] = {}
        for node in ast.walk(module):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                named = _run_files_named(node.value, {})
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            elif isinstance(node, ast.For | ast.comprehension):  # for name in (rundir.X, ...)
                named, targets = _run_files_named(node.iter, {}), [node.target]
            else:
                continue
            for target in targets:
                for name in ast.walk(target):
                    if named and isinstance(name, ast.Name):
                        bound[name.id] = bound.get(name.id, set()) | named
        for node in ast.walk(module):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called not in OPENERS:
                continue
            parts = [*node.args, *(k.value for k in node.keywords)]
            if isinstance(func, ast.Attribute):
                parts.append(func.value)  # path.open(), path.read_text()
            for part in parts:
                found |= {(node.lineno, name) for name in _run_files_named(part, bound)}
    return found


def test_the_opener_finder_finds_opens():
    source = (
        "def f(run):\n"
        "    path = run / rundir.SPLITS\n"
        "    with open(path) as fh: pass\n"
        "    (run / rundir.METRICS).read_text()\n"
        "    rundir.read_splits(run)\n"
        "    (run / rundir.SPLITS).is_file()\n"
        "    for name in (rundir.PREDICTIONS, rundir.SPLITS):\n"
        "        open(run / name)\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "m.py"
        file.write_text(source)
        assert run_files_opened(file) == {
            (3, "SPLITS"),
            (4, "METRICS"),
            (8, "PREDICTIONS"),
            (8, "SPLITS"),
        }


def test_run_files_are_opened_by_the_run_contract():
    """Outside ``osteolightning/runs/`` no module opens a run file itself (``splits.csv``,
    the predictions, the marker, ``metrics.json`` ...): it calls the reader or writer that
    ``runs/`` keeps for everyone (``rundir.read_splits``, ``rundir.write_predictions`` ...).
    The few files still read by their one consumer are listed, each with its reason."""
    opened = {
        (name, constant, f"{path.relative_to(REPO)}:{line}")
        for path in _sources()
        if RUNS not in path.parents
        for name in [_module_name(path)]
        for line, constant in run_files_opened(path)
    }
    assert sorted(o for o in opened if (o[0], o[1]) not in OPENED_OUTSIDE_RUNS) == []
    # the list shrinks with the code: an entry nothing needs any more is taken out
    assert {(o[0], o[1]) for o in opened} == OPENED_OUTSIDE_RUNS


def test_splits_csv_is_read_and_written_in_runs_only():
    """``splits.csv``, a run file that data audits, models, the leaderboard and ``osteo-eval``
    read: its name is used in ``runs/`` alone, everyone else calls ``rundir.read_splits``,
    ``rundir.find_splits`` and ``rundir.write_splits``."""
    named = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in _sources()
        if RUNS not in path.parents
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in ("SPLITS", "SPLITS_COLUMNS")
        and isinstance(node.value, ast.Name) and node.value.id == "rundir"
    ]  # fmt: skip
    assert named == []


def test_utils_holds_helpers_only():
    """``utils/`` imports nothing from the run contract or any higher floor."""
    climbing = [
        f"{module} imports {dep}"
        for module, deps in import_graph().items()
        if module.startswith(HELPERS)
        for dep in sorted(deps)
        if not any(dep == p or dep.startswith(f"{p}.") for p in HELPERS_MAY_IMPORT)
    ]
    assert climbing == []


def test_the_package_never_imports_the_plugins():
    assert [
        f"{module} imports {dep}"
        for module, deps in import_graph().items()
        if module.startswith("osteolightning")
        for dep in deps
        if dep.startswith("hydra_plugins")
    ] == []


def _imported_modules(tree: ast.Module, modules: dict[str, Path]) -> dict[str, str]:
    """Local name → package module, for ``import a.b as c`` and ``from a import b``."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    names[alias.asname] = alias.name
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_crosses_a_package():
    """No module-level state or helper is shared across packages through a ``_private`` name
    (``from osteolightning.callbacks.last_checkpoint import _ACTIVE``, ``lifecycle._owner(...)``
    from another package): what another package needs is public and documented. A module
    file whose name starts with ``_`` (``hydra_plugins/osteo_sweeps/_grid.py``) is hidden from
    Hydra's plugin scan, not private."""
    modules = _modules()
    crossing = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                crossing += [
                    f"{module}:{node.lineno} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if _private(alias.name) and package_of(node.module) != package_of(module)
                ]
        imported = _imported_modules(tree, modules)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported
                and _private(node.attr)
                and package_of(imported[node.value.id]) != package_of(module)
            ):
                crossing.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert crossing == []


def test_no_module_sets_another_packages_state():
    """No module assigns to a module-level name of another package (``runs.X = ...``,
    ``module.STATE[key] = ...``): state a package keeps is changed through its functions."""
    modules = _modules()
    setting = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        imported = _imported_modules(tree, modules)
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                while isinstance(target, ast.Subscript):
                    target = target.value
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id in imported
                    and package_of(imported[target.value.id]) != package_of(module)
                ):
                    setting.append(f"{module}:{node.lineno} sets {target.value.id}.{target.attr}")
    assert setting == []


#: Modules that only forward an old ``python -m`` command to the module's new home (path →
#: the module it runs); each imports nothing from the package and defines nothing.
COMMAND_ALIASES = {PACKAGE / "utils" / "model_card.py": "osteolightning.runs.model_card"}


@pytest.mark.parametrize("alias", sorted(COMMAND_ALIASES), ids=lambda p: p.name)
def test_a_command_alias_only_forwards(alias):
    tree = ast.parse(alias.read_text())
    assert import_graph()[_module_name(alias)] == set()
    assert not [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.Assign)]
    assert f'"{COMMAND_ALIASES[alias]}"' in alias.read_text()
    assert COMMAND_ALIASES[alias] in _modules()
