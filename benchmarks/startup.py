"""Command to first training step: what a job pays before it learns anything.

A sweep of many short jobs (linear probes, nested CV, Optuna trials at test size) pays every
job's start-up. This runs ``osteo-train`` as a user would (a fresh process, the console
command's module), with one extra callback, :class:`FirstStepProbe`, which records the
process's CPU time (all threads, and any worker processes it has waited for) and the wall
clock since the command was started, when the first training batch begins. It compares them
with two baselines measured in the same run, each in a fresh process:

- ``import torch, lightning`` (and torchmetrics, which Lightning imports): the floor no
  Lightning framework can go below;
- ``import osteolightning.train``: the import of the command's module (the framework's
  imports on top of the floor).

The framework's own share is *first step - floor*: its imports, Hydra's composition, the
config checks, the run directory, the data set-up (with a warm cache: the images prepared by an
earlier run), the model, the Trainer and the sanity check. Each figure is the median of
``--repeats`` fresh processes (with min and max).

Example:
    python benchmarks/startup.py                               # the tiny job, 5 repeats
    python benchmarks/startup.py --kl-root /data/KneeOA/ClaheDataset224 --out startup.json
    python benchmarks/startup.py --repeats 1                   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from osteolightning.utils.files import atomic_write_json

BENCHMARKS = Path(__file__).resolve().parent
#: the environment variable that carries the command's start (``time.time()``) to the probe
T0 = "OSTEO_STARTUP_T0"


def _cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (user + system)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class FirstStepProbe(L.Callback):
    """Writes ``{"cpu_s", "wall_s"}`` to ``out`` when the first training batch starts, then
    ends the process at once (the benchmark needs nothing after it, and a Trainer asked to stop
    would finish its minimum epochs first)."""

    def __init__(self, out: str) -> None:
        self.out, self.done = Path(out), False

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.done:
            return
        self.done = True
        started = float(os.environ.get(T0, "nan"))
        record = {"cpu_s": _cpu_seconds(), "wall_s": time.time() - started}
        self.out.write_text(json.dumps(record))
        os._exit(0)  # no teardown: the run folder is a temporary one


_IMPORT = (
    "import json, os, resource, time; t0 = float(os.environ['{t0}']); import {modules}; "
    "u = resource.getrusage(resource.RUSAGE_SELF); "
    "print(json.dumps({{'cpu_s': u.ru_utime + u.ru_stime, 'wall_s': time.time() - t0}}))"
)


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(BENCHMARKS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "disabled", T0: repr(time.time())}


def time_import(modules: str) -> dict[str, float]:
    """CPU and wall seconds of a fresh interpreter that imports ``modules``."""
    code = _IMPORT.format(t0=T0, modules=modules)
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_first_step(overrides: Sequence[str], work: Path) -> dict[str, float]:
    """CPU and wall seconds from ``osteo-train <overrides>`` to its first training batch."""
    out = Path(tempfile.mkdtemp(prefix="job-", dir=work))
    probe = out / "first_step.json"
    command = [
        sys.executable,
        "-m",
        "osteolightning.train",
        *overrides,
        f"hydra.run.dir={out / 'run'}",
        "+callbacks.first_step._target_=startup.FirstStepProbe",
        f"+callbacks.first_step.out={probe}",
        "test=false",
    ]
    done = subprocess.run(command, env=_env(), cwd=out, capture_output=True, text=True)
    if not probe.is_file():
        raise RuntimeError(
            f"The job never reached its first training step (exit {done.returncode}):\n"
            f"{' '.join(command)}\n{done.stderr[-3000:]}"
        )
    return json.loads(probe.read_text())


def summarise(samples: list[dict[str, float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"n": len(samples), "samples": samples}
    for clock in ("cpu_s", "wall_s"):
        values = [s[clock] for s in samples]
        row[clock] = statistics.median(values)
        row[f"{clock}_range"] = [min(values), max(values)]
    return row


def jobs(args: argparse.Namespace, cache: Path) -> dict[str, list[str]]:
    """The jobs measured: name -> osteo-train overrides."""
    found = {
        "tiny": ["debug=tiny", "logger=csv", f"paths.cache_dir={cache}"],
    }
    if args.kl_root:
        found["kl_8260"] = [
            "experiment=kl_grading",
            f"data.root={args.kl_root}",
            "logger=csv",
            "data.num_workers=0",
            *([f"paths.cache_dir={args.kl_cache}"] if args.kl_cache else []),
        ]
    return found


def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"repeats": args.repeats, "rows": {}}
    with tempfile.TemporaryDirectory(prefix="osteo-startup-") as tmp:
        work = Path(tmp)
        cache = args.cache_dir or work / "cache"
        planned = jobs(args, cache)
        for overrides in planned.values():  # warm caches (phantom, prepared images), untimed
            time_first_step(overrides, work)
        samples: dict[str, list[dict[str, float]]] = {
            "import torch+lightning": [],
            "import osteolightning.train": [],
            **{f"first step: {name}": [] for name in planned},
        }
        for i in range(args.repeats):  # interleaved, so drift hits every row alike
            samples["import torch+lightning"].append(time_import("torch, lightning, torchmetrics"))
            samples["import osteolightning.train"].append(time_import("osteolightning.train"))
            for name, overrides in planned.items():
                samples[f"first step: {name}"].append(time_first_step(overrides, work))
            print(f"  repeat {i + 1}/{args.repeats} done", file=sys.stderr)
    rows = {name: summarise(values) for name, values in samples.items()}
    floor = rows["import torch+lightning"]
    for row in rows.values():  # the framework's share: beyond the floor, paired by repeat
        shares = [
            s["cpu_s"] - f["cpu_s"] for s, f in zip(row["samples"], floor["samples"], strict=True)
        ]
        row["beyond_floor_cpu_s"] = statistics.median(shares)
    result["rows"] = rows
    result["load_average"] = list(os.getloadavg())
    result["cpu_count"] = os.cpu_count()
    return result


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Command to first training step (median of {result['repeats']})")
    for col in ("what", "CPU s", "CPU range", "wall s", "wall range", "CPU beyond the floor"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for name, r in result["rows"].items():
        table.add_row(
            name,
            f"{r['cpu_s']:.2f}",
            f"{r['cpu_s_range'][0]:.2f}-{r['cpu_s_range'][1]:.2f}",
            f"{r['wall_s']:.2f}",
            f"{r['wall_s_range'][0]:.2f}-{r['wall_s_range'][1]:.2f}",
            f"{r['beyond_floor_cpu_s']:.2f}",
        )
    Console(stderr=True, width=120).print(table)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per figure")
    parser.add_argument(
        "--kl-root", type=Path, default=None, help="also time experiment=kl_grading on this folder"
    )
    parser.add_argument(
        "--kl-cache", type=Path, default=None, help="the KL run's paths.cache_dir (warm cache)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="the tiny job's cache (default: a temp one)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = measure(args)
    print_table(result)
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
