"""Training throughput (images/s) on a GPU: the plain loop and ``osteo-train`` with each GPU option.

For each backbone (``--backbones``, default ResNet-50 and EfficientNet-B0, from scratch) at
``--size`` px (224), in bf16 (``bf16-mixed``; ``--device cpu`` uses fp32), on synthetic
images (``loader.py``'s, written once):

- **plain, synthetic**: forward, backward and AdamW step on one random batch already on the
  device: the network's own ceiling, no data at all;
- **plain, loader**: the same loop over the DataModule's training loader (the CPU path,
  ``--workers`` processes), under ``torch.autocast``;
- **osteo-train**: ``train()`` of the composed config (default callbacks, CSV logger,
  validation off: throughput only) with no option, ``model.channels_last``,
  ``model.compile``, ``data.on_device=resident`` and all three together.

The first ``--warmup`` steps (compilation, cuDNN autotuning, allocator) are not timed; the next
``--steps`` are, wall clock with the device synchronised, validation excluded. Each row also
has the peak device memory (``torch.cuda.max_memory_allocated``) and, for ``osteo-train``, the
host-device synchronisations counted in 10 steady steps (``torch.cuda.set_sync_debug_mode``:
each is a wait of the host for the GPU). ``--fit-test`` adds (first) a short ``trainer=gpu``
fit and test of the default model on the phantom, with its metrics and peak memory.
``--budget-s`` stops starting rows after that many seconds (the rows left are listed as
skipped).

Example:
    python benchmarks/throughput.py --out results/throughput.json --fit-test
    python benchmarks/throughput.py --dry-run            # CPU, tiny: checks the script
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import write_images  # noqa: E402
from overhead import compose_train  # noqa: E402

#: the osteo-train options compared (overrides)
OPTIONS: dict[str, list[str]] = {
    "osteo-train": [],
    "+channels_last": ["model.channels_last=true"],
    "+compile": ["model.compile=true"],
    "+on_device=resident": ["data.on_device=resident"],
    "+all three": ["model.channels_last=true", "model.compile=true", "data.on_device=resident"],
}


class StepTimer(L.Callback):
    """Times training steps ``warmup`` .. ``warmup + steps`` (validation excluded) and counts
    the host-device synchronisations of 10 of them."""

    def __init__(self, warmup: int, steps: int, count_syncs: bool) -> None:
        self.warmup, self.steps, self.count_syncs = warmup, steps, count_syncs
        self.images, self.seconds, self._last = 0, 0.0, None
        self.syncs: int | None = None
        self._recorder: Any = None

    def _sync(self, trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self.warmup:
            self._sync(trainer)
            self._last = time.perf_counter()
            if self.count_syncs and trainer.strategy.root_device.type == "cuda":
                self._recorder = warnings.catch_warnings(record=True)
                self._caught = self._recorder.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
        elif self.warmup < step <= self.warmup + self.steps and self._last is not None:
            self.images += len(batch["label"])
            if step == self.warmup + 10 and self._recorder is not None:
                torch.cuda.set_sync_debug_mode("default")
                self._recorder.__exit__(None, None, None)
                self.syncs = sum("synchroniz" in str(w.message) for w in self._caught)
                self._recorder = None
            if step == self.warmup + self.steps:
                self._sync(trainer)
                self.seconds += time.perf_counter() - self._last
                self._last = None
                trainer.should_stop = True

    def on_validation_start(self, trainer: L.Trainer, module: Any) -> None:
        if self._last is not None:
            self._sync(trainer)
            self.seconds += time.perf_counter() - self._last

    def on_validation_end(self, trainer: L.Trainer, module: Any) -> None:
        if self._last is not None:
            self._sync(trainer)
            self._last = time.perf_counter()


@contextmanager
def with_callback(callback: L.Callback):
    """Every ``Trainer.fit`` in the block gets ``callback`` too."""
    original = L.Trainer.fit

    def fit(self: L.Trainer, *args: Any, **kwargs: Any) -> Any:
        self.callbacks.append(callback)
        return original(self, *args, **kwargs)

    L.Trainer.fit = fit  # type: ignore[method-assign]
    try:
        yield
    finally:
        L.Trainer.fit = original  # type: ignore[method-assign]


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def plain(cfg: Any, args: argparse.Namespace, device: torch.device, loader: bool) -> dict:
    """The hand-written loop: synthetic batch on the device, or the DataModule's loader."""
    net = hydra.utils.instantiate(cfg.model.net).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if loader:
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup("fit")
        batches = iter(_forever(datamodule.train_dataloader()))
    else:
        x = torch.randn(args.batch_size, 1, args.size, args.size, device=device)
        y = torch.randint(0, 3, (args.batch_size,), device=device)
        batches = iter(_forever([{"image": x, "label": y}]))
    seconds, images = 0.0, 0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            _sync(device)
            start = time.perf_counter()
        batch = next(batches)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            images += len(y)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": images / seconds, "syncs_per_10_steps": None}


def _forever(iterable: Any):
    while True:
        yield from iterable


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def framework(
    work: Path, cache: Path, overrides: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """``train()`` with a :class:`StepTimer`; images/s of the timed steps."""
    from osteolightning.train import train

    timer = StepTimer(args.warmup, args.steps, count_syncs=True)
    run_dir = Path(tempfile.mkdtemp(prefix="tp-", dir=work)) / "run"
    with with_callback(timer):
        train(compose_train(run_dir, cache, overrides))
    if not timer.seconds:
        raise RuntimeError("the timed steps did not complete (too few training batches?)")
    return {"images_per_s": timer.images / timer.seconds, "syncs_per_10_steps": timer.syncs}


def base_overrides(args: argparse.Namespace, backbone: str, root: Path) -> list[str]:
    gpu = args.device == "gpu"
    return [
        "data=folder",
        f"data.root={root}",
        f"model/backbone={backbone}",
        "model.net.pretrained=false",
        f"image_size={args.size}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"data.pin_memory={str(gpu).lower()}",
        "data.near_duplicate_distance=null",
        "logger=csv",
        "trainer=gpu" if gpu else "trainer=cpu",
        "trainer.max_epochs=1000",
        "+trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "callbacks.model_checkpoint=null",
        "callbacks.early_stopping=null",
        "test=false",
    ]


def fit_and_test(work: Path, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A short ``trainer=gpu`` fit and test of the default model on the phantom."""
    from osteolightning.train import train

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    reset_peak(device)
    overrides = (
        ["trainer=gpu", "image_size=224", "data.num_workers=8", "trainer.max_epochs=2"]
        if args.device == "gpu"
        else ["debug=tiny"]
    )
    run_dir = Path(tempfile.mkdtemp(prefix="fit-", dir=work)) / "run"
    start = time.perf_counter()
    metrics, _ = train(compose_train(run_dir, cache, [*overrides, "logger=csv"]))
    return {
        "overrides": overrides,
        "seconds": time.perf_counter() - start,
        "peak_mib": peak_mib(device),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
    }


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    cache = work / "cache"
    root = work / f"images-{args.size}"
    write_images(root, args.images, args.size)
    result: dict[str, Any] = {}
    if args.fit_test:  # first: it must not be what the time budget leaves out
        result["fit_test"] = fit_and_test(work, cache, args)
    started, rows, skipped = time.perf_counter(), [], []
    options = dict(OPTIONS)
    if args.dry_run:  # the compile path without minutes of C++ compilation on the CPU
        options = {
            k: [o.replace("model.compile=true", "model.compile={backend:aot_eager}") for o in v]
            for k, v in options.items()
        }
    for backbone in args.backbones:
        base = base_overrides(args, backbone, root)
        cfg = compose_train(work / "cfg" / "run", cache, base)
        plan = [("plain, synthetic", None), ("plain, loader", None), *options.items()]
        for name, extra in plan:
            if time.perf_counter() - started > args.budget_s:
                skipped.append(f"{backbone} {name}")
                continue
            reset_peak(device)
            t0 = time.perf_counter()
            if extra is None:
                row = plain(cfg, args, device, loader=name.endswith("loader"))
            else:
                row = framework(work, cache, [*base, *extra], args)
            rows.append(
                {
                    "backbone": backbone,
                    "run": name,
                    "seconds": time.perf_counter() - t0,
                    "peak_mib": peak_mib(device),
                    **row,
                }
            )
            print(f"  {backbone:16s} {name:22s} {row['images_per_s']:9.1f} img/s", file=sys.stderr)
    result.update(rows=rows, skipped=skipped)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="resnet50,efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--images", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--fit-test", action="store_true", help="also a short fit + test")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.backbones = [b for b in args.backbones.split(",") if b]
    if args.dry_run:
        args.device, args.size, args.batch_size, args.workers = "cpu", 64, 4, 0
        args.images, args.warmup, args.steps = 60, 1, 11
    if args.device == "gpu" and not torch.cuda.is_available():
        parser.error("no CUDA device: use --device cpu or --dry-run")
    if args.steps < 11:
        parser.error("--steps must be at least 11 (10 of them count the synchronisations)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    with tempfile.TemporaryDirectory(prefix="osteo-throughput-") as tmp:
        result = measure(args, Path(tmp))
    result.update(
        device=torch.cuda.get_device_name() if args.device == "gpu" else "cpu",
        size=args.size,
        batch_size=args.batch_size,
        precision="bf16-mixed" if args.device == "gpu" else "32-true",
        dry_run=args.dry_run,
        torch=torch.__version__,
    )
    if args.out:
        from osteolightning.utils.files import atomic_write_json

        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
