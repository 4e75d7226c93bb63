"""Training throughput and peak memory of the backbones in `osteolightning/conf/model/backbone/`.

For each backbone: forward + backward + SGD step on a random 1-channel batch at the backbone's
input size, `--warmup` untimed iterations, then the median of `--iters` timed ones. A baseline
(resnet18 unless `--baseline` says otherwise) is measured in the same run, so the table's
ratios compare like with like on this machine.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` (tensors only); on CPU, the growth of the
process's peak resident set size (``resource.getrusage``, ``ru_maxrss``) while the backbone is
built and run. Peak RSS never goes down, so a backbone that needs less than an earlier one
reports ~0 growth: on CPU, run one backbone per process (``--backbones X``) for exact figures.

Example:
    python benchmarks/backbones.py --backbones resnet18,alexnet --iters 2
    python benchmarks/backbones.py --size native --batch-size 32 --out results/backbones.csv
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from osteolightning.backbones import backbone_facts
from osteolightning.models.components.backbone import create_backbone
from osteolightning.utils.config import CONFIG_DIR

BACKBONE_DIR = Path(CONFIG_DIR) / "model" / "backbone"
COMMON = Path(CONFIG_DIR) / "common" / "default.yaml"


def input_size(name: str, size: str) -> int:
    """``composed``: the backbone's ``image_size`` or the common default; ``native``: its own."""
    own = OmegaConf.load(BACKBONE_DIR / f"{name}.yaml")
    if size == "native":
        return backbone_facts(name).input_size
    if size == "composed":
        return int(own.get("image_size", OmegaConf.load(COMMON).image_size))
    return int(size)


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure(name: str, size: int, batch: int, warmup: int, iters: int, device: str) -> dict:
    """Images/s (median over ``iters``) and peak memory of one training step."""
    own = OmegaConf.load(BACKBONE_DIR / f"{name}.yaml")
    cuda = device == "cuda"
    rss_before = peak_rss_mib()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    net = create_backbone(own.model.net.name, num_classes=3, in_chans=1).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, size, size, device=device)  # (B, 1, H, W)
    y = torch.randint(0, 3, (batch,), device=device)
    times = []
    for i in range(warmup + iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib() - rss_before
    return {
        "backbone": name,
        "model": own.model.net.name,
        "device": device,
        "image_size": size,
        "batch_size": batch,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "images_per_s": batch / statistics.median(times),
        "peak_mib": memory,
        "memory": "cuda max_memory_allocated" if cuda else "peak RSS growth",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = sorted(p.stem for p in BACKBONE_DIR.glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backbones",
        default=",".join(names),
        help=(
            "comma-separated files of osteolightning/conf/model/backbone "
            f"(default: all: {','.join(names)})"
        ),
    )
    parser.add_argument("--baseline", default="resnet18", help="reference for the ratio columns")
    parser.add_argument(
        "--size",
        default="composed",
        help="composed (image_size as osteo-train composes it), native, or a number of pixels",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (median)")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "both"],
        help="auto: cpu, and cuda too when available",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    parser.add_argument("--out", type=Path, help="write the rows to this .csv or .json")
    args = parser.parse_args(argv)
    args.backbones = [n for n in args.backbones.split(",") if n]
    unknown = sorted(set(args.backbones + [args.baseline]) - set(names))
    if unknown:
        parser.error(f"unknown backbone(s) {unknown}; expected files of {BACKBONE_DIR}: {names}")
    if args.size not in ("composed", "native") and not args.size.isdigit():
        parser.error(f"--size must be composed, native or an integer, not {args.size!r}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device in ("auto", "both", "cpu") else []
    if args.device in ("cuda", "both") or (args.device == "auto" and torch.cuda.is_available()):
        devices.append("cuda")
    names = [args.baseline] + [n for n in args.backbones if n != args.baseline]
    rows = []
    for device in devices:
        base = None
        for name in names:
            size = input_size(name, args.size)
            row = measure(name, size, args.batch_size, args.warmup, args.iters, device)
            base = base or row
            row["speed_vs_baseline"] = row["images_per_s"] / base["images_per_s"]
            row["memory_vs_baseline"] = (
                row["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")
            )
            rows.append(row)
    table = Table(
        title=f"forward+backward, batch {args.batch_size}, median of {args.iters} "
        f"(baseline {args.baseline}; CPU threads {args.threads})"
    )
    for col in (
        "backbone",
        "device",
        "px",
        "params (M)",
        "images/s",
        "× speed",
        "peak MiB",
        "× mem",
    ):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for r in rows:
        table.add_row(
            r["backbone"],
            r["device"],
            str(r["image_size"]),
            f"{r['params_m']:.1f}",
            f"{r['images_per_s']:.1f}",
            f"{r['speed_vs_baseline']:.2f}",
            f"{r['peak_mib']:.0f}",
            f"{r['memory_vs_baseline']:.2f}",
        )
    Console().print(table)
    Console().print("memory: CUDA max_memory_allocated; CPU growth of peak RSS (ru_maxrss)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps(rows, indent=2))
        else:
            import csv

            with open(args.out, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
