"""Images per second of the training DataLoader: cache → augmentation → tensors.

For each image side (``--sizes``), augmentation preset (``--presets``,
``osteolightning/conf/data/augment/``) and number of DataLoader workers (``--workers``), the
``KneeDataModule`` that ``osteo-train`` composes (``data=folder`` on synthetic images; see below) is
set up once (untimed: the cache and the image array are built), then its training loader is read:
the first batch (worker start-up) is timed apart, then ``--batches`` batches (epoch after epoch), as
images/s of wall-clock time. Nothing else runs in the process: this is the rate at which the loader
can feed a model.

Extra rows, at the first size with the ``light`` preset and the most workers, say what some
choices cost (each batch also goes through the DataModule's batch hooks, as the trainer's
would on the CPU: the normalisation, and the augmentation of the device path, are counted):

- **in-RAM array**: the training images copied into the process first (as DataModules did
  before the cache was memory-mapped): the cost of reading through the page cache;
- **no per-item seed**: the augmentation not seeded per image from ``(seed, epoch, index)``
  (``ArrayDataset.seed_augment`` a no-op): the cost of reproducible augmentation, also
  measured directly as microseconds per call;
- **on_device=normalize**: augmented in the workers, shipped as uint8, normalised after;
- **on_device=stream**: uint8 shipped, augmented and normalised in the main process in torch
  (on a GPU this runs on the device).

Data: ``--images`` synthetic textured radiograph-like images (a smooth random field plus
noise), written once as PNG files of the benchmarked side into class folders in a temporary
folder. The loader's work does not depend on what the pixels show.

Example:
    python benchmarks/loader.py                           # 224 and 512 px, 4 presets, 0-2 workers
    python benchmarks/loader.py --sizes 224 --presets light --workers 2 --batches 100
    python benchmarks/loader.py --short --out results/loader.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch

from osteolightning.data.datasets import ArrayDataset
from osteolightning.data.sampling import item_seed
from osteolightning.utils.config import compose_config
from osteolightning.utils.files import atomic_write_json

PRESETS = ("none", "light", "radiograph", "strong")
CLASSES = ("normal", "osteopenia", "osteoporosis")


def write_images(root: Path, n: int, side: int, seed: int = 0) -> Path:
    """``n`` synthetic ``side`` px PNG images in ``root/<class>/`` (skipped when present)."""
    rng = np.random.default_rng(seed)
    marker = root.with_name(f"{root.name}.n{n}-s{side}.done")  # outside the class tree
    if marker.exists():
        return root
    for i in range(n):
        coarse = rng.random((12, 12), dtype=np.float32)
        field = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
        noise = rng.integers(0, 24, (side, side), dtype=np.uint8)
        image = np.clip(field * 220, 0, 231).astype(np.uint8) + noise
        folder = root / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"img{i:06d}.png"), image)
    marker.touch()
    return root


def datamodule(
    root: Path,
    cache: Path,
    side: int,
    preset: str,
    workers: int,
    batch: int,
    extra: Sequence[str] = (),
) -> Any:
    """The DataModule ``osteo-train data=folder`` builds, set up (cache and array built)."""
    cfg = compose_config(
        "train",
        [
            "data=folder",
            f"data.root={root}",
            f"image_size={side}",
            f"data/augment={preset}",
            f"data.num_workers={workers}",
            f"data.batch_size={batch}",
            "data.val_fraction=0.05",
            "data.test_fraction=0.05",
            *extra,
        ],
        cache_dir=cache,
    )
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    return dm


def process_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) of the processes ``pids`` so far (Linux ``/proc``; else 0)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def read_loader(dm: Any, batches: int) -> dict[str, float]:
    """Start-up (first batch), images/s over the next ``batches`` batches, and the CPU time
    per image of the main process and the workers together (steady under other jobs' load)."""
    loader = dm.train_dataloader()
    start = time.perf_counter()
    epoch, seen, it = 0, 0, iter(loader)
    next(it)
    startup = time.perf_counter() - start
    pids = [w.pid for w in getattr(it, "_workers", [])]  # persistent: the same all along
    cpu = time.process_time() + process_cpu_s(pids)
    start = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            epoch += 1
            loader.sampler.set_epoch(epoch)
            it = iter(loader)
            batch = next(it)
        # what the trainer does next on the CPU (no-ops unless data.on_device is set)
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
        seen += len(batch["label"])
    seconds = time.perf_counter() - start
    cpu = time.process_time() + process_cpu_s(pids) - cpu
    del it, loader  # stops persistent workers
    return {
        "startup_s": startup,
        "images": seen,
        "seconds": seconds,
        "images_per_s": seen / seconds,
        "cpu_us_per_image": 1e6 * cpu / seen,
    }


def seed_cost_us(dataset: ArrayDataset, n: int = 2000) -> dict[str, float]:
    """Microseconds per ``seed_augment`` call and per ``item_seed`` (the seed alone)."""
    start = time.perf_counter()
    for i in range(n):
        dataset.seed_augment(i % len(dataset), 1)
    per_call = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for i in range(n):
        item_seed(0, 1, i)
    return {"seed_augment_us": per_call, "item_seed_us": (time.perf_counter() - start) / n * 1e6}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    extras: dict[str, Any] = {}
    cache = work / "cache"
    for side in args.sizes:
        root = write_images(work / f"images{side}", args.images, side)
        for preset in args.presets:
            for workers in args.workers:
                dm = datamodule(root, cache, side, preset, workers, args.batch_size)
                result = read_loader(dm, args.batches)
                rows.append(
                    {
                        "size": side,
                        "preset": preset,
                        "workers": workers,
                        "variant": "default",
                        **result,
                    }
                )
                report(rows[-1])
        if side == args.sizes[0] and "light" in args.presets and args.variants:
            workers = max(args.workers)
            dm = datamodule(root, cache, side, "light", workers, args.batch_size)
            train = dm.datasets["train"]
            train.images = np.asarray(train.images)  # the old path: a private copy in RAM
            rows.append(
                {
                    "size": side,
                    "preset": "light",
                    "workers": workers,
                    "variant": "in-RAM array",
                    **read_loader(dm, args.batches),
                }
            )
            report(rows[-1])
            dm = datamodule(root, cache, side, "light", workers, args.batch_size)
            extras["seeding"] = seed_cost_us(dm.datasets["train"])
            original = ArrayDataset.seed_augment
            ArrayDataset.seed_augment = lambda self, i, epoch: None  # forked workers inherit it
            try:
                rows.append(
                    {
                        "size": side,
                        "preset": "light",
                        "workers": workers,
                        "variant": "no per-item seed",
                        **read_loader(dm, args.batches),
                    }
                )
            finally:
                ArrayDataset.seed_augment = original
            report(rows[-1])
            for mode in ("normalize", "stream"):
                extra = [f"data.on_device={mode}"]
                dm = datamodule(root, cache, side, "light", workers, args.batch_size, extra)
                rows.append(
                    {
                        "size": side,
                        "preset": "light",
                        "workers": workers,
                        "variant": f"on_device={mode}",
                        **read_loader(dm, args.batches),
                    }
                )
                report(rows[-1])
    return {"rows": rows, **extras}


def report(row: dict[str, Any]) -> None:
    print(
        f"  {row['size']:4d} px {row['preset']:10s} {row['workers']} workers "
        f"{row['variant']:16s} {row['images_per_s']:8.0f} img/s, "
        f"{row['cpu_us_per_image']:6.0f} µs CPU/img (start-up {row['startup_s']:.2f} s)",
        file=sys.stderr,
    )


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Training DataLoader throughput (images/s, wall clock)")
    for col in ("px", "preset", "workers", "variant", "img/s", "CPU µs/img", "start-up s"):
        table.add_column(col, justify="left" if col in ("preset", "variant") else "right")
    for r in result["rows"]:
        table.add_row(
            str(r["size"]),
            r["preset"],
            str(r["workers"]),
            r["variant"],
            f"{r['images_per_s']:,.0f}",
            f"{r['cpu_us_per_image']:,.0f}",
            f"{r['startup_s']:.2f}",
        )
    console = Console(stderr=True)
    console.print(table)
    if "seeding" in result:
        s = result["seeding"]
        console.print(
            f"per-item seeding: {s['seed_augment_us']:.1f} µs per image "
            f"(item_seed alone {s['item_seed_us']:.1f} µs)"
        )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=_ints, default=[224, 512], help="image sides, e.g. 224,512")
    parser.add_argument("--presets", default=",".join(PRESETS), help="augmentation presets")
    parser.add_argument("--workers", type=_ints, default=[0, 1, 2], help="worker counts")
    parser.add_argument("--images", type=int, default=1024, help="synthetic images per size")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per row")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--no-variants", dest="variants", action="store_false", help="skip the extra rows"
    )
    parser.add_argument("--short", action="store_true", help="seconds: 64 px, tiny counts")
    parser.add_argument("--work-dir", type=Path, default=None, help="images and cache (kept)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = parser.parse_args(argv)
    args.presets = [p for p in args.presets.split(",") if p]
    unknown = set(args.presets) - set(PRESETS)
    if unknown:
        parser.error(f"unknown preset(s) {sorted(unknown)}; known: {list(PRESETS)}")
    if min(args.sizes) < 32 or args.images < 40 or args.batches < 1 or min(args.workers) < 0:
        parser.error("sizes >= 32, --images >= 40, --batches >= 1, workers >= 0")
    if args.short:
        args.sizes, args.images, args.batches, args.batch_size = [64], 60, 3, 8
        args.workers = [0, 1]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the main process only reads batches, as beside a training step
    with tempfile.TemporaryDirectory(prefix="osteo-loader-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = measure(args, work)
    result.update(
        short=args.short,
        batch_size=args.batch_size,
        load_average=list(os.getloadavg()),
        cpu_count=os.cpu_count(),
        median_images_per_s=statistics.median(r["images_per_s"] for r in result["rows"]),
    )
    print_table(result)
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
