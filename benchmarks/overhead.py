"""The framework's overhead: ``osteo-train``'s fit against a plain PyTorch loop, in one process.

Both train the same network (``model.net`` of the composed config, same initial weights),
with the same optimiser and scheduler, over the same DataLoaders (the ``KneeDataModule`` of
the config, built once), for the same epochs, each epoch followed by a pass over the
validation split:

- **plain**: ``for batch in loader: loss = F.cross_entropy(net(x), y); zero_grad; backward;
  step; scheduler.step()``, then the validation batches under ``torch.no_grad`` (accuracy
  counted): what a user writes by hand.
- **osteo-train**: :func:`osteolightning.train.train` on the composed config (``test=false``):
  the default callbacks (best and last checkpoints, early stopping, LR monitor, rich progress
  bar and model summary, fine-tuning schedule, run artefacts) and loggers (CSV, W&B offline),
  the metric collections, the sanity check. Only ``Trainer.fit`` is timed: run-directory
  set-up and W&B start-up happen once per run, before it.

Three regimes (``--regimes``): ``slow`` (ResNet-18 at 128 px: a step of about a second on a
CPU core), ``fast`` (ResNet-10-T at 64 px: tens of milliseconds), where per-step costs of
the framework show, and ``short`` (the fast network on 600 knees for 4 epochs of about two
seconds: a plain loop of about 10 s), where a fit's fixed costs show: W&B's start-up, the
sanity check, checkpoint writes, the writers. The two loops alternate, ``--repeats`` times
each (plain, fit, fit, plain, ...). The ratio is the geometric mean of the paired ratios
(each fit with the plain run beside it, so drift cancels) with a 95 % t-interval over the
pairs; the medians are reported too. Both the wall-clock time and the CPU time of the process
(all its threads; ``--workers 0`` keeps data loading in the process) are reported: on a
machine that other jobs share, the CPU time is the steadier measure.

In the ``short`` regime every framework fit also records where its CPU time went
(:class:`Attribution`): the sanity check, checkpoint writes, each callback's and logger's
hooks and the LightningModule's epoch hooks, each second counted once (in the innermost of
them); the rest is the training loop itself (steps, validation passes, metrics).

Example:
    python benchmarks/overhead.py                        # the three regimes, 3 repeats each
    python benchmarks/overhead.py --regimes fast --repeats 5 --out results/overhead.json
    python benchmarks/overhead.py --profile results/prof  # cProfile of one fit per regime
    python benchmarks/overhead.py --short                 # seconds: tiny runs, for the tests
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import itertools
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from osteolightning.utils.config import compose_config
from osteolightning.utils.files import atomic_write_json

#: regime → (backbone, image side, phantom images, epochs)
REGIMES: dict[str, dict[str, Any]] = {
    # 800 knees (the default phantom): 17 steps an epoch, as `make train`
    "slow": {"backbone": "resnet18", "size": 128, "n": 800, "epochs": 3},
    "fast": {"backbone": "resnet10t", "size": 64, "n": 2000, "epochs": 3},
    # a short fit: 4 epochs of about 2 s, where the fixed costs of a fit show
    "short": {"backbone": "resnet10t", "size": 64, "n": 600, "epochs": 4},
}
#: the regime whose framework fits also record where their CPU time went
ATTRIBUTED = "short"
SHORT = {"n": 120, "epochs": 2}  # two epochs: the second is a steady state


def compose_train(run_dir: Path, cache_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """``osteolightning/conf/train.yaml`` composed as ``osteo-train`` would, writing under
    ``run_dir``."""
    return compose_config("train", overrides, output_dir=run_dir, cache_dir=cache_dir)


def regime_overrides(regime: dict[str, Any], args: argparse.Namespace) -> list[str]:
    return [
        f"model/backbone={regime['backbone']}",
        f"image_size={regime['size']}",
        f"data.source.n={regime['n']}",
        f"data.source.size={regime['size']}",
        f"data.num_workers={args.workers}",
        f"data.batch_size={args.batch_size}",
        f"trainer.max_epochs={regime['epochs']}",
        f"trainer.min_epochs={regime['epochs']}",
        f"trainer.accelerator={args.device}",
        "test=false",
        *args.override,
    ]


def read_clocks(cuda: bool) -> tuple[float, float]:
    """The wall clock and the process's CPU time, now (after the GPU's queued work)."""
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


class Clock:
    """Wall-clock and process CPU seconds of a block (CUDA synchronised at both ends)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.wall, self.cpu = cuda, 0.0, 0.0

    @contextmanager
    def __call__(self):
        wall, cpu = read_clocks(self.cuda)
        try:
            yield self
        finally:
            end_wall, end_cpu = read_clocks(self.cuda)
            self.wall, self.cpu = end_wall - wall, end_cpu - cpu


class EpochMarks:
    """Wall-clock and CPU times at the start of each epoch and at the end of the last: an
    epoch is its training steps, its validation pass and whatever runs at its end (metrics,
    logging, checkpoints). The epochs after the first are the **steady state**: no sanity
    check, set-up, first-call costs or end-of-fit work; their time per step is the per-step
    cost, apart from a fit's fixed costs."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def mark(self) -> None:
        wall, cpu = read_clocks(self.cuda)
        self.wall.append(wall)
        self.cpu.append(cpu)

    def epochs(self) -> dict[str, list[float]]:
        """Each epoch's seconds on both clocks: ``epoch_wall_s``, ``epoch_cpu_s``."""
        return {
            f"epoch_{name}_s": [b - a for a, b in itertools.pairwise(marks)]
            for name, marks in (("wall", self.wall), ("cpu", self.cpu))
        }

    def watch(self, trainer: L.Trainer) -> None:
        """Mark the start of each of ``trainer``'s training epochs and the end of the last."""
        loop = trainer.fit_loop
        for name in ("on_advance_start", "on_run_end"):
            method = getattr(loop, name)

            def marked(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
                self.mark()
                return _method(*args, **kwargs)

            setattr(loop, name, marked)


def plain_loop(
    cfg: DictConfig, datamodule: Any, device: torch.device, max_batches: int | None = None
) -> dict[str, float]:
    """Train ``cfg.model.net`` by hand over the datamodule's loaders; return the times."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as train() does
    net = hydra.utils.instantiate(cfg.model.net).to(device)
    optimizer = hydra.utils.instantiate(cfg.model.optimizer)(net.parameters())
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
    epochs = int(cfg.trainer.max_epochs)
    scheduler = hydra.utils.instantiate(cfg.model.scheduler)(optimizer, epochs * len(train_loader))
    clock = Clock(device.type == "cuda")
    marks = EpochMarks(clock.cuda)
    correct = seen = 0
    with clock():
        for epoch in range(epochs):
            marks.mark()
            net.train()
            train_loader.sampler.set_epoch(epoch)
            for step, batch in enumerate(train_loader):
                if max_batches is not None and step >= max_batches:
                    break
                x = batch["image"].to(device, non_blocking=True)  # (B, C, H, W)
                y = batch["label"].to(device, non_blocking=True)  # (B,)
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            net.eval()
            with torch.no_grad():
                for batch in val_loader:
                    logits = net(batch["image"].to(device, non_blocking=True))
                    correct += int((logits.argmax(1).cpu() == batch["label"]).sum())
                    seen += len(batch["label"])
        marks.mark()
    return {
        "wall_s": clock.wall,
        "cpu_s": clock.cpu,
        **marks.epochs(),
        "val_acc": correct / max(seen, 1),
    }


#: the hooks of a LightningModule whose time is its own (epoch ends compute metrics, write)
MODULE_HOOKS = (
    "setup",
    "on_fit_start",
    "on_train_start",
    "on_train_epoch_end",
    "on_validation_epoch_end",
    "on_train_end",
    "on_fit_end",
)
#: what a logger does, by method
LOGGER_METHODS = ("log_hyperparams", "log_metrics", "log_graph", "save", "finalize")


class Attribution:
    """CPU seconds of one fit by who spent them. Each labelled call is timed exclusively: a
    second spent in a labelled call inside another labelled call (a checkpoint written by a
    callback) counts for the inner one only, so the labels add up to at most the fit's time."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []  # [label, CPU time it was last resumed at]

    @contextmanager
    def __call__(self, label: str):
        now = time.process_time()
        if self._stack:  # pause the caller
            self.totals[self._stack[-1][0]] += now - self._stack[-1][1]
        self._stack.append([label, now])
        try:
            yield
        finally:
            now = time.process_time()
            done, started = self._stack.pop()
            self.totals[done] += now - started
            if self._stack:  # resume the caller
                self._stack[-1][1] = now

    def wrap(self, owner: Any, name: str, label: str) -> None:
        """Time ``owner.name(...)`` under ``label`` (an instance attribute shadows the method)."""
        method = getattr(owner, name)

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self(label):
                return method(*args, **kwargs)

        setattr(owner, name, timed)

    def instrument(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Label the sanity check, checkpoint writes, every callback's and logger's hooks and
        the module's epoch hooks of ``trainer``'s coming fit."""
        self.wrap(trainer, "_run_sanity_check", "sanity check")
        self.wrap(trainer, "save_checkpoint", "checkpoint writes")
        # files written without Trainer.save_checkpoint's dump (BestCheckpoint's held weights)
        self.wrap(trainer.strategy, "save_checkpoint", "checkpoint writes")
        hooks = [n for n in vars(L.Callback) if n.startswith(("on_", "setup", "teardown"))]
        for callback in trainer.callbacks:
            for hook in hooks:  # only the hooks the callback's class implements
                if getattr(type(callback), hook) is not getattr(L.Callback, hook):
                    self.wrap(callback, hook, f"callback {type(callback).__name__}")
        for logger in trainer.loggers:
            for method in LOGGER_METHODS:
                if hasattr(logger, method):
                    self.wrap(logger, method, f"logger {type(logger).__name__}")
        for hook in MODULE_HOOKS:
            if getattr(type(module), hook) is not getattr(L.LightningModule, hook):
                self.wrap(module, hook, f"module {hook}")


@contextmanager
def timed_fit(
    record: list[dict[str, Any]],
    cuda: bool,
    profile: Path | None = None,
    attribute: bool = False,
):
    """Time every ``Trainer.fit`` in the block (optionally under cProfile, dumped to
    ``profile``; with ``attribute``, also where its CPU time went: ``record[-1]["by"]``)."""
    original = L.Trainer.fit

    def fit(self: L.Trainer, *args: Any, **kwargs: Any) -> Any:
        clock, profiler = Clock(cuda), cProfile.Profile() if profile else None
        attribution = Attribution() if attribute else None
        marks = EpochMarks(cuda)
        marks.watch(self)
        if attribution is not None:
            module = kwargs.get("model", args[0] if args else None)
            attribution.instrument(self, module)
        try:
            with clock():
                if profiler:
                    profiler.enable()
                try:
                    return original(self, *args, **kwargs)
                finally:
                    if profiler:
                        profiler.disable()
                        profiler.dump_stats(profile)
        finally:
            record.append({"wall_s": clock.wall, "cpu_s": clock.cpu, **marks.epochs()})
            if attribution is not None:
                by = dict(attribution.totals)
                by["training loop (the rest)"] = clock.cpu - sum(by.values())
                record[-1]["by"] = by

    L.Trainer.fit = fit  # type: ignore[method-assign]
    try:
        yield
    finally:
        L.Trainer.fit = original  # type: ignore[method-assign]


def framework_fit(
    work: Path,
    cache: Path,
    overrides: list[str],
    cuda: bool,
    profile: Path | None = None,
    attribute: bool = False,
) -> dict[str, Any]:
    """``train(cfg)`` (fit only) in a fresh run directory; the time of its ``Trainer.fit``
    (with ``attribute``: and where its CPU time went, ``"by"``)."""
    from osteolightning.train import train

    record: list[dict[str, Any]] = []
    run_dir = Path(tempfile.mkdtemp(prefix="fit-", dir=work)) / "run"
    with timed_fit(record, cuda, profile, attribute):
        metrics, _ = train(compose_train(run_dir, cache, overrides))
    return {**record[-1], "val_acc": float(metrics.get("val/acc", float("nan")))}


def paired_ratio(plain: Sequence[float], fit: Sequence[float]) -> dict[str, float]:
    """The geometric mean of the paired ratios ``fit[i] / plain[i]`` with its 95 % t-interval
    (on the log scale, over the pairs; no bounds, ``None``, with a single pair)."""
    from scipy import stats

    logs = [math.log(f / p) for p, f in zip(plain, fit, strict=True)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return {"ratio": math.exp(mean), "low": None, "high": None, "pairs": len(logs)}
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return {
        "ratio": math.exp(mean),
        "low": math.exp(mean - half),
        "high": math.exp(mean + half),
        "pairs": len(logs),
    }


def profile_table(path: Path, top: int = 25) -> str:
    """The ``top`` functions of a cProfile dump by cumulative time, as text."""
    import io

    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def measure_regime(name: str, args: argparse.Namespace, work: Path, cache: Path) -> dict[str, Any]:
    """Alternate plain and framework runs of one regime; medians and their ratio."""
    regime = {**REGIMES[name], **(SHORT if args.short else {})}
    overrides = regime_overrides(regime, args)
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    cuda = device.type == "cuda"
    cfg = compose_train(work / f"{name}-data" / "run", cache, overrides)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")  # the phantom and the image array are built here, untimed
    # warm-up, untimed: first-call costs (allocator, kernels, lazy imports) hit neither side
    if not args.short:
        plain_loop(cfg, datamodule, device, max_batches=2)
        framework_fit(
            work,
            cache,
            [
                *overrides,
                "trainer.max_epochs=1",
                "trainer.min_epochs=1",
                "+trainer.limit_train_batches=2",
                "+trainer.limit_val_batches=1",
            ],
            cuda,
        )
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "osteo-train": []}
    order = ["plain", "osteo-train", "osteo-train", "plain"]  # ABBA: drift cancels
    for i in range(args.repeats):
        for kind in order[:2] if i % 2 == 0 else order[2:]:
            if kind == "plain":
                runs[kind].append(plain_loop(cfg, datamodule, device))
            else:
                attribute = name == ATTRIBUTED
                runs[kind].append(framework_fit(work, cache, overrides, cuda, None, attribute))
            last = runs[kind][-1]
            print(
                f"  {name:5s} {kind:12s} wall {last['wall_s']:7.2f} s  cpu {last['cpu_s']:7.2f} s",
                file=sys.stderr,
            )
    train_batches = len(datamodule.train_dataloader())
    steps = train_batches * int(regime["epochs"])
    row: dict[str, Any] = {
        "regime": name,
        "backbone": regime["backbone"],
        "image_size": regime["size"],
        "batch_size": args.batch_size,
        "epochs": int(regime["epochs"]),
        "train_steps": steps,
        "val_batches": len(datamodule.val_dataloader()) * int(regime["epochs"]),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "runs": runs,
    }
    for clock in ("wall_s", "cpu_s"):
        plain = statistics.median(r[clock] for r in runs["plain"])
        fit = statistics.median(r[clock] for r in runs["osteo-train"])
        row[f"plain_{clock}"], row[f"fit_{clock}"] = plain, fit
        row[f"median_ratio_{clock[:-2]}"] = fit / plain
        paired = paired_ratio(
            [r[clock] for r in runs["plain"]], [r[clock] for r in runs["osteo-train"]]
        )
        row[f"ratio_{clock[:-2]}"] = paired["ratio"]
        row[f"ratio_{clock[:-2]}_ci95"] = [paired["low"], paired["high"]]
        row[f"plain_ms_per_step_{clock[:-2]}"] = 1000 * plain / steps
        # what the framework adds, per training step (fixed costs spread over the steps)
        row[f"overhead_ms_per_step_{clock[:-2]}"] = 1000 * (fit - plain) / steps
        # per step, apart from the fit's fixed costs: the epochs after the first
        steady = {kind: [sum(r[f"epoch_{clock}"][1:]) for r in runs[kind]] for kind in runs}
        if all(s > 0 for kind in runs for s in steady[kind]):
            paired = paired_ratio(steady["plain"], steady["osteo-train"])
            row[f"steady_ratio_{clock[:-2]}"] = paired["ratio"]
            row[f"steady_ratio_{clock[:-2]}_ci95"] = [paired["low"], paired["high"]]
            steady_steps = train_batches * (int(regime["epochs"]) - 1)
            row[f"steady_overhead_ms_per_step_{clock[:-2]}"] = (
                1000
                * (statistics.median(steady["osteo-train"]) - statistics.median(steady["plain"]))
                / steady_steps
            )
    attributed = [r["by"] for r in runs["osteo-train"] if "by" in r]
    if attributed:  # CPU seconds per fit by who spent them (medians over the fits)
        labels = sorted({label for by in attributed for label in by})
        row["breakdown_cpu_s"] = {
            label: statistics.median(by.get(label, 0.0) for by in attributed) for label in labels
        }
        row["fixed_cpu_s"] = row["fit_cpu_s"] - row["plain_cpu_s"]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        dump = args.profile / f"{name}-fit.prof"
        framework_fit(work, cache, overrides, cuda, profile=dump)
        (args.profile / f"{name}-fit.txt").write_text(profile_table(dump))
    return row


def _interval(r: dict[str, Any], key: str) -> str:
    low, high = r.get(f"{key}_ci95", (None, None))
    return "" if low is None else f" [{low:.3f}, {high:.3f}]"


def _steady(r: dict[str, Any]) -> str:
    """The steady-state (epochs after the first) CPU ratio and its interval, or ``-``."""
    if "steady_ratio_cpu" not in r:
        return "-"
    return f"{r['steady_ratio_cpu']:.3f}{_interval(r, 'steady_ratio_cpu')}"


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="osteo-train's fit against a plain PyTorch loop (x: paired, 95 % CI; per step:"
        " the epochs after the first)"
    )
    columns = (
        "regime",
        "net",
        "px",
        "steps",
        "plain ms/step",
        "plain s",
        "fit s",
        "x wall",
        "plain CPU s",
        "fit CPU s",
        "x CPU",
        "+CPU ms/step",
        "per step x CPU",
    )
    for col in columns:
        table.add_column(col, justify="left" if col in ("regime", "net") else "right")
    for r in rows:
        table.add_row(
            r["regime"],
            r["backbone"],
            str(r["image_size"]),
            str(r["train_steps"]),
            f"{r['plain_ms_per_step_cpu']:.0f}",
            f"{r['plain_wall_s']:.1f}",
            f"{r['fit_wall_s']:.1f}",
            f"{r['ratio_wall']:.3f}{_interval(r, 'ratio_wall')}",
            f"{r['plain_cpu_s']:.1f}",
            f"{r['fit_cpu_s']:.1f}",
            f"{r['ratio_cpu']:.3f}{_interval(r, 'ratio_cpu')}",
            f"{r['overhead_ms_per_step_cpu']:.1f}",
            _steady(r),
        )
    console = Console(stderr=True, width=160)
    console.print(table)
    for r in rows:
        if "breakdown_cpu_s" not in r:
            continue
        parts = Table(title=f"{r['regime']}: where a fit's CPU time goes (median of the fits)")
        parts.add_column("part")
        parts.add_column("CPU s", justify="right")
        for label, seconds in sorted(r["breakdown_cpu_s"].items(), key=lambda kv: -kv[1]):
            parts.add_row(label, f"{seconds:.3f}")
        parts.add_row("fit - plain loop", f"{r['fixed_cpu_s']:.3f}")
        console.print(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--regimes", default="slow,fast,short", help="comma-separated: slow, fast, short"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop per regime")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu", "auto"),
        default="auto",
        help="auto: the GPU when there is one",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the phantom and its cache go (default: a temp folder)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="an extra osteo-train override for both loops (repeatable)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="also profile one fit per regime (cProfile) into this folder",
    )
    parser.add_argument("--short", action="store_true", help="tiny runs (seconds), 1 repeat")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    unknown = set(args.regimes.split(",")) - set(REGIMES)
    if unknown:
        parser.error(f"unknown regime(s) {sorted(unknown)}; known: {list(REGIMES)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.device == "auto":
        args.device = "gpu" if torch.cuda.is_available() else "cpu"
    if args.short:
        args.repeats = 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory(prefix="osteo-overhead-") as tmp:
        work = Path(tmp)
        cache = args.cache_dir or work / "cache"
        rows = [measure_regime(name, args, work, cache) for name in args.regimes.split(",")]
    result = {
        "rows": rows,
        "short": args.short,
        "repeats": args.repeats,
        "load_average": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "lightning": L.__version__,
    }
    print_table(rows)
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
