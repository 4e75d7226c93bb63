"""``osteo-train reproduce=<run dir>``: run a finished run again and compare its metrics.

The new run takes every setting from the old run's saved ``.hydra/config.yaml`` except where it
writes: ``paths`` are this invocation's (a NEW run directory, never the old one; the log and
cache folders), and ``resume`` / ``reproduce`` are cleared. Its ``.hydra/config.yaml`` is
replaced by the config it ran (so it too can be reproduced), and it gets ``reproduction.json``:
every number of the recorded ``metrics.json`` beside the reproduced one and their difference,
also printed as a table. With ``trainer.deterministic=true`` on a CPU the numbers are identical.

Example:
    osteo-train reproduce=logs/train/runs/2026-01-01_00-00-00_000000
    osteo-train -m reproduce=logs/train/multiruns/<stamp>/0,logs/train/multiruns/<stamp>/3
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from osteolightning.errors import ConfigError
from osteolightning.runs import rundir
from osteolightning.utils.console import print_table
from osteolightning.utils.files import atomic_write_json, atomic_write_text
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: Keys of the saved config that belong to the old invocation, not to the run's recipe.
CLEARED = ("resume", "reproduce")


def reproduction_config(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """The config that re-runs ``cfg.reproduce`` in this invocation's run directory.

    Returns:
        ``(config, old run directory)``.

    Raises:
        ConfigError: the old run has no saved config or no ``metrics.json`` (not finished), or
            the new run directory is the old one.
    """
    old = Path(str(cfg.reproduce)).expanduser().resolve()
    saved = old / rundir.CONFIG
    if not saved.is_file():
        raise ConfigError(
            f"Expected `reproduce` to be a run directory holding {rundir.CONFIG}, but "
            f"'{saved}' does not exist."
        )
    if not (old / rundir.METRICS).is_file():
        raise ConfigError(
            f"Expected `reproduce` to be a finished run, but '{old}' has no {rundir.METRICS} "
            "to compare with (a failed or unfinished run: continue it with resume=<dir>)."
        )
    new = OmegaConf.load(saved)
    with open_dict(new):
        new.paths = OmegaConf.create(OmegaConf.to_container(cfg.paths, resolve=True))
        for key in CLEARED:
            new[key] = None
    if Path(str(new.paths.output_dir)).resolve() == old:
        raise ConfigError(
            f"A reproduction runs in a new directory, but this run's directory is '{old}', the "
            "run to reproduce; leave hydra.run.dir unset."
        )
    return new, old


def ignored_overrides() -> list[str]:
    """This invocation's command-line overrides that a reproduction does not apply (all but
    ``reproduce``, ``paths.*`` and ``hydra.*``): the saved config decides."""
    if not HydraConfig.initialized():
        return []
    task = HydraConfig.get().overrides.task
    return [
        o
        for o in task
        if not o.lstrip("+~").startswith(("reproduce=", "paths.", "hydra.", "hydra/"))
    ]


def _numbers(value: Any) -> list[float] | None:
    """A metric as a flat list of numbers (a scalar, an interval, a confusion matrix)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, list):
        flat = [_numbers(v) for v in value]
        return None if any(f is None for f in flat) else [x for f in flat for x in f]
    return None


def _difference(recorded: Any, reproduced: Any) -> float | None:
    """``reproduced - recorded`` for scalars, the largest absolute difference for lists;
    ``None`` when one side is missing or the shapes differ."""
    a, b = _numbers(recorded), _numbers(reproduced)
    if a is None or b is None or len(a) != len(b):
        return None
    if isinstance(recorded, int | float):
        return b[0] - a[0]
    return max((abs(y - x) for x, y in zip(a, b, strict=True)), default=0.0)


def _same(recorded: Any, reproduced: Any) -> bool:
    a, b = _numbers(recorded), _numbers(reproduced)
    if a is None or b is None or len(a) != len(b):
        return False
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def compare_metrics(recorded: dict[str, Any], reproduced: dict[str, Any]) -> list[dict[str, Any]]:
    """Metric by metric: ``{metric, recorded, reproduced, difference, identical}`` for every
    numeric key of either file (scalars, intervals, confusion matrices; text such as the tested
    checkpoint's path, which names the run directory, is left out).

    ``difference`` is ``reproduced - recorded`` (lists: the largest absolute difference), ``None``
    for a metric only one side has.
    """
    keys = [k for k in recorded if _numbers(recorded[k]) is not None]
    keys += [k for k in reproduced if k not in recorded and _numbers(reproduced[k]) is not None]
    return [
        {
            "metric": k,
            "recorded": recorded.get(k),
            "reproduced": reproduced.get(k),
            "difference": _difference(recorded.get(k), reproduced.get(k)),
            "identical": _same(recorded.get(k), reproduced.get(k)),
        }
        for k in keys
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def print_reproduction(rows: list[dict[str, Any]], old: Path, new: Path) -> None:
    """The comparison as a terminal table (intervals and matrices only where they differ),
    differing metrics in red."""
    shown = [r for r in rows if not (isinstance(r["recorded"], list) and r["identical"])]
    differ = [r["metric"] for r in rows if not r["identical"]]
    print_table(
        f"Reproduction of {old}\nin {new}",
        ["metric", "recorded", "reproduced", "difference"],
        [
            [r["metric"], *(_cell(r[c]) for c in ("recorded", "reproduced", "difference"))]
            for r in shown
        ],
        styles=[None if r["identical"] else "bold red" for r in shown],
        footer=f"{len(rows) - len(differ)} of {len(rows)} metrics identical"
        + (f"; differing: {', '.join(differ)}" if differ else ""),
    )


def reproduce_run(cfg: DictConfig, run: Callable[[DictConfig], Any]) -> Any:
    """Re-run ``cfg.reproduce`` with ``run`` (``osteo-train``'s job function) in this
    invocation's run directory, then write and print ``reproduction.json``.

    Args:
        cfg: this invocation's config (``reproduce`` set; its ``paths`` are used).
        run: runs one config, e.g. :func:`osteolightning.train.run_job`.

    Returns:
        What ``run`` returned (the optimised metric, for sweepers).

    Raises:
        ConfigError: see :func:`reproduction_config`.
    """
    new_cfg, old = reproduction_config(cfg)
    if ignored := ignored_overrides():
        log.warning(
            f"reproduce= runs the saved config of {old}; these overrides are ignored: "
            f"{' '.join(ignored)}. To change the run, start a new one with its overrides."
        )
    new = Path(str(new_cfg.paths.output_dir))
    log.info(f"Reproducing {old} in {new} from its saved {rundir.CONFIG}.")
    new.mkdir(parents=True, exist_ok=True)
    atomic_write_text(new / rundir.CONFIG, OmegaConf.to_yaml(new_cfg))
    value = run(new_cfg)
    if not (new / rundir.METRICS).is_file():  # a multirun job that failed: error.json says why
        log.error(f"The reproduction of {old} in {new} did not finish; nothing to compare.")
        return value
    rows = compare_metrics(rundir.read_metrics(old), rundir.read_metrics(new))
    atomic_write_json(
        new / rundir.REPRODUCTION,
        {
            "reproduced": str(old),
            "run": str(new.resolve()),
            "identical": all(r["identical"] for r in rows),
            "metrics": rows,
        },
    )
    print_reproduction(rows, old, new)
    return value
