"""Resident memory per DDP rank against the data set's size: memory flat in N.

For each data set size (``--sizes``, default 2,000 and 20,000 images of 224 px: 0.1 and 1.0 GB
of preprocessed pixels), ``osteo-train``'s ``train()`` runs a short 2-rank ``trainer=ddp_cpu``
fit (two spawned processes on the CPU, gloo) of ResNet-10-T: a few training steps and
validation batches, no test, CSV logger only. A thread of this (the launching) process reads
``/proc`` of every process it started, every ``--interval`` seconds, and keeps per process:

- **peak RSS**: ``VmHWM`` (the highest resident set the process ever had);
- **anon**: resident anonymous memory (``RssAnon``): the process's private copies; an
  in-RAM data set shows here, N x S x S bytes per rank;
- **file**: resident file-backed pages (``RssFile``): the memory-mapped image array (and the
  libraries), pages of the page cache that every process on the node shares;
- **PSS**: proportional set size (``smaps_rollup``): shared pages divided among the processes
  that map them.

The table shows each rank's values at each size and the growth from the smallest to the
largest set, next to the growth of the data itself. ``--ranks 1`` runs the fit in this process
(``trainer=cpu``) instead.

Data: synthetic textured images (a smooth random field plus noise, distinct perceptual hashes),
written once as PNG files into class folders under ``--work-dir`` (default: a temporary
folder), then preprocessed into the cache there by the fit itself (untimed here; a 20,000-image
set takes a few minutes on 2 cores). The knee phantom would need about 15 minutes for 20,000.

Example:
    python benchmarks/memory.py                                   # 2,000 and 20,000 at 224 px
    python benchmarks/memory.py --work-dir /tmp/mem --out results/memory.json
    python benchmarks/memory.py --short                           # seconds, one process
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from osteolightning.utils.config import compose_config
from osteolightning.utils.files import atomic_write_json

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks import one another
from loader import write_images as write_pngs  # noqa: E402

FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")


def write_images(root: Path, n: int, side: int, seed: int = 0) -> float:
    """``n`` synthetic PNG images of ``side`` px in ``root/<class>/`` (loader.py's); seconds
    taken (about 0 when they were there)."""
    start = time.perf_counter()
    write_pngs(root, n, side, seed)
    return time.perf_counter() - start


def status_kib(pid: int) -> dict[str, int]:
    """The memory fields of ``/proc/<pid>/status`` (KiB) and PSS from ``smaps_rollup``."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in FIELDS:
                out[key] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (``/proc/<pid>/task/*/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


class Poller(threading.Thread):
    """Samples the memory of this process and its descendants until stopped; keeps, per
    process, the largest value of each field and its command line."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.peaks: dict[int, dict[str, int]] = {}
        self.cmdlines: dict[int, str] = {}

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            for pid in [me, *children(me)]:
                values = status_kib(pid)
                if not values:
                    continue
                if pid not in self.cmdlines:
                    try:
                        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                        self.cmdlines[pid] = raw.replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        self.cmdlines[pid] = ""
                peak = self.peaks.setdefault(pid, {})
                for key, value in values.items():
                    peak[key] = max(peak.get(key, 0), value)
            self.stop.wait(self.interval)


def run_fit(root: Path, work: Path, args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One short fit on ``n`` images; the memory of the launcher and of each rank (MiB)."""
    from osteolightning.train import train

    run_dir = Path(tempfile.mkdtemp(prefix=f"n{n}-", dir=work)) / "run"
    trainer = (
        ["trainer=ddp_cpu", f"trainer.devices={args.ranks}"] if args.ranks > 1 else ["trainer=cpu"]
    )
    cfg = compose_config(
        "train",
        [
            "data=folder",
            f"data.root={root}",
            f"image_size={args.side}",
            "model=tiny",
            "logger=csv",
            "callbacks=tiny",
            *trainer,
            "trainer.max_epochs=1",
            f"+trainer.limit_train_batches={args.steps}",
            f"+trainer.limit_val_batches={args.steps}",
            "++trainer.num_sanity_val_steps=0",
            "data.num_workers=0",
            f"data.batch_size={args.batch_size}",
            "saliency.enabled=false",
            "test=false",
        ],
        output_dir=run_dir,
        cache_dir=work / "cache",
    )
    # the data set is prepared (cache entries, array) before the fit, as osteo-train's
    # first run would: timed apart, not sampled
    import hydra

    start = time.perf_counter()
    hydra.utils.instantiate(cfg.data).setup("fit")
    prepare_s = time.perf_counter() - start
    poller = Poller(args.interval)
    poller.start()
    start = time.perf_counter()
    train(cfg)
    fit_s = time.perf_counter() - start
    poller.stop.set()
    poller.join()
    me = os.getpid()
    ranks = [p for p, c in poller.cmdlines.items() if p != me and "spawn_main" in c]
    rows = {"launcher": poller.peaks[me]} if args.ranks > 1 else {"rank0": poller.peaks[me]}
    for r, pid in enumerate(sorted(ranks)):
        rows[f"rank{r}"] = poller.peaks[pid]
    mib = {name: {k: v / 1024 for k, v in values.items()} for name, values in rows.items()}
    return {
        "n": n,
        "data_mib": n * args.side**2 / 2**20,
        "prepare_s": prepare_s,
        "fit_s": fit_s,
        "processes": mib,
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Resident memory per process (MiB): peak RSS, anonymous, file, PSS")
    for col in ("images", "data MiB", "process", "peak RSS", "anon", "file", "PSS"):
        table.add_column(col, justify="left" if col == "process" else "right")
    for run in result["runs"]:
        for name, m in run["processes"].items():
            table.add_row(
                f"{run['n']:,}",
                f"{run['data_mib']:,.0f}",
                name,
                *(f"{m.get(k, 0):,.0f}" for k in ("VmHWM", "RssAnon", "RssFile", "Pss")),
            )
    for name, g in result["growth"].items():
        table.add_row(
            "growth",
            f"{result['data_growth_mib']:,.0f}",
            name,
            *(f"{g.get(k, 0):+,.0f}" for k in ("VmHWM", "RssAnon", "RssFile", "Pss")),
        )
    Console(stderr=True).print(table)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,20000", help="data set sizes (images)")
    parser.add_argument("--side", type=int, default=224, help="image side (px)")
    parser.add_argument("--ranks", type=int, default=2, help="DDP ranks (1: this process)")
    parser.add_argument("--steps", type=int, default=4, help="training and validation batches")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--work-dir", type=Path, default=None, help="images and cache (kept)")
    parser.add_argument("--short", action="store_true", help="seconds: 60/120 images, 1 rank")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = parser.parse_args(argv)
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    if len(args.sizes) < 2 or min(args.sizes) < 60 or args.ranks < 1 or args.side < 32:
        parser.error("two or more --sizes of at least 60 images, --ranks >= 1, --side >= 32")
    if not Path("/proc/self/status").exists():
        parser.error("this benchmark reads /proc (Linux)")
    if args.short:
        args.sizes, args.side, args.ranks, args.steps, args.batch_size = [60, 120], 64, 1, 2, 8
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="osteo-memory-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = []
        for n in args.sizes:
            root = work / f"images-n{n}-s{args.side}"
            written = write_images(root, n, args.side)
            runs.append({**run_fit(root, work, args, n), "write_s": written})
            print(
                f"  {n:,} images: prepared in {runs[-1]['prepare_s']:.0f} s, fit "
                f"{runs[-1]['fit_s']:.0f} s",
                file=sys.stderr,
            )
    first, last = runs[0], runs[-1]
    growth = {
        name: {k: last["processes"][name].get(k, 0) - v for k, v in values.items()}
        for name, values in first["processes"].items()
        if name in last["processes"]
    }
    result = {
        "runs": runs,
        "growth": growth,
        "data_growth_mib": last["data_mib"] - first["data_mib"],
        "ranks": args.ranks,
        "side": args.side,
        "short": args.short,
        "load_average": list(os.getloadavg()),
    }
    print_table(result)
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
