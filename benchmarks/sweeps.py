"""A sweep's fixed costs: its disk, its wall time, and what running its command again costs.

Each sweep runs as a user runs it (``osteo-train`` in a fresh process, into a folder of this
run), then its command runs again, unchanged (a grid and a nested CV with ``resume=auto``; an
Optuna study continues by itself): a finished sweep's rerun should start no job, rebuild no
leaderboard or report, and say it is complete. Reported per sweep: jobs, wall-clock and CPU
seconds (the process and its children) of the first run and of the rerun, the disk the sweep
leaves (``disk.json``: all of it, its checkpoints, the resumable ones) and whether the rerun
said it was complete and rebuilt nothing.

Sweeps (``--sweeps``):
- ``grid``: ``experiment=kumar2023_tiny`` (15 jobs: Inception v3, Xception, ResNet-18 x 5 folds,
  their best 3 jobs' weights kept);
- ``optuna``: ``hparams_search=knee_optuna_tiny debug=tiny`` (2 trials);
- ``nested``: ``experiment=knee_select_tiny`` (2 outer x 2 inner folds, 12 jobs).

Example:
    python benchmarks/sweeps.py --out sweeps.json                 # all three (minutes)
    python benchmarks/sweeps.py --sweeps optuna,nested            # the short ones
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from osteolightning.utils.files import atomic_write_json

#: name -> (the sweep's overrides, the rerun's extra overrides)
SWEEPS: dict[str, tuple[list[str], list[str]]] = {
    "grid": (["experiment=kumar2023_tiny"], ["resume=auto"]),
    "optuna": (["-m", "hparams_search=knee_optuna_tiny", "debug=tiny"], []),
    "nested": (["experiment=knee_select_tiny"], ["resume=auto"]),
}
#: what a rerun that did nothing says (any of them), and what it must not say
COMPLETE = ("is complete",)
REBUILT = ("Leaderboard of", "Launching")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(overrides: list[str], folder: Path, cache: Path) -> dict[str, Any]:
    """``osteo-train <overrides>`` into ``folder``: wall and CPU seconds, exit status, output."""
    command = [
        sys.executable,
        "-m",
        "osteolightning.train",
        *overrides,
        f"hydra.sweep.dir={folder}",
        f"paths.cache_dir={cache}",
        f"paths.log_dir={folder.parent / 'logs'}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cpu, wall = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=folder.parent, env=env, capture_output=True, text=True)
    result = {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": _children_cpu() - cpu,
        "returncode": done.returncode,
    }
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return {**result, "output": done.stdout + done.stderr}


def measure(name: str, work: Path, cache: Path) -> dict[str, Any]:
    overrides, again = SWEEPS[name]
    folder = work / name
    first = run(overrides, folder, cache)
    rerun = run([*overrides, *again], folder, cache)
    output = rerun.pop("output")
    first.pop("output")
    disk = json.loads((folder / "disk.json").read_text())
    jobs = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return {
        "sweep": name,
        "command": "osteo-train " + " ".join(overrides),
        "jobs": len(jobs),
        "first": first,
        "rerun": rerun,
        "disk_mb": disk["after"]["bytes"] / 2**20,
        "checkpoint_mb": disk["after"]["checkpoint_bytes"] / 2**20,
        "checkpoints": disk["after"]["checkpoints"],
        "resumable_checkpoints": disk["after"]["resumable_checkpoints"],
        "rerun_said_complete": any(line in output for line in COMPLETE),
        "rerun_rebuilt": [line for line in REBUILT if line in output],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="A sweep's fixed costs")
    columns = ("sweep", "jobs", "run wall s", "run CPU s", "disk MB", "ckpts (last.ckpt)")
    columns += ("rerun wall s", "rerun CPU s", "rerun: complete, rebuilt")
    for col in columns:
        table.add_column(col, justify="left" if col == "sweep" else "right")
    for r in rows:
        table.add_row(
            r["sweep"],
            str(r["jobs"]),
            f"{r['first']['wall_s']:.1f}",
            f"{r['first']['cpu_s']:.1f}",
            f"{r['disk_mb']:,.1f}",
            f"{r['checkpoints']} ({r['resumable_checkpoints']})",
            f"{r['rerun']['wall_s']:.1f}",
            f"{r['rerun']['cpu_s']:.1f}",
            f"{r['rerun_said_complete']}, {r['rerun_rebuilt'] or 'nothing'}",
        )
    Console(stderr=True, width=140).print(table)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweeps", default="grid,optuna,nested", help="comma-separated")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the sweeps here (default: a temp folder)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.sweeps.split(",")) - set(SWEEPS)
    if unknown:
        parser.error(f"unknown sweep(s) {sorted(unknown)}; known: {list(SWEEPS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="osteo-sweeps-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [measure(name, work, work / "cache") for name in args.sweeps.split(",")]
    result = {"rows": rows, "load_average": list(os.getloadavg()), "cpu_count": os.cpu_count()}
    print_table(rows)
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
