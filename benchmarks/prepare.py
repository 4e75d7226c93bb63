"""Data preparation at scale: time of each stage for N images, on synthetic data.

Stages, as a run prepares its data (``osteo-train``, ``osteo-data audit``):

- **hash**: :func:`perceptual_hash` of synthetic textured ``S x S`` uint8 images (the size of
  the preprocessed cache images). Timed on ``--hash-sample`` distinct images (generating
  100 000 images takes longer than hashing them) and extrapolated linearly to N.
- **search**: :func:`near_duplicate_pairs` on N synthetic 64-bit hashes: uniform random,
  with about 1% planted near copies (0 to ``max_distance`` bits flipped) and a group of equal
  hashes (blank images). Every planted pair must be found. The baseline, measured in the same
  run, is the blocked O(N²) scan of all pairs (the previous implementation); above
  ``--scan-max`` hashes it is timed on the first ``--scan-max`` and extrapolated
  quadratically. Where it runs in full its pairs are compared with the new search's.
- **group**: :func:`group_ids` over patient, content-hash and near-duplicate keys.
- **split**: :func:`assign_splits` (stratified, grouped train/val/test).
- **cache**: :class:`PreprocessedCache` on ``--cache-files`` JPEG files written to a temp
  folder: cold (SHA-1, decode, letterbox, resize, store) and warm (memoised hash, load);
  per-image rates, extrapolated linearly to N.

Example:
    python benchmarks/prepare.py                      # N = 100 000
    python benchmarks/prepare.py --short --out results/prepare.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from osteolightning.data import hash_search
from osteolightning.data.hash_search import _blocked_scan
from osteolightning.data.near_duplicates import near_duplicate_pairs, perceptual_hash
from osteolightning.data.splits import assign_splits, group_ids

STAGES = ("hash", "search", "search baseline", "group", "split", "cache cold", "cache warm")


def texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """``(side, side)`` uint8: a smooth random field (a distinct pHash) plus pixel noise."""
    coarse = rng.random((12, 12), dtype=np.float32)
    field = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 24, (side, side), dtype=np.uint8)
    return np.clip(field * 220, 0, 231).astype(np.uint8) + noise


def synthetic_hashes(
    n: int, max_distance: int, seed: int
) -> tuple[np.ndarray, set[tuple[int, int]], int]:
    """``(N,)`` uint64 hashes, the planted near pairs ``(i, j)``, and the size of the blank group.

    1% of the hashes are copies of another with 0 to ``max_distance`` bits flipped; the last
    ``n // 500`` hashes (at least 2) are equal.
    """
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    blank = max(2, n // 500)
    words[n - blank :] = words[n - blank]
    n_planted = max(2, n // 100)
    chosen = rng.permutation(n - blank)[: 2 * n_planted].reshape(2, -1)  # (2, P) disjoint
    planted = set()
    for src, dst in chosen.T.tolist():
        bits = rng.choice(64, size=rng.integers(0, max_distance + 1), replace=False)
        words[dst] = words[src] ^ np.uint64(sum(1 << int(b) for b in bits))
        planted.add((min(src, dst), max(src, dst)))
    return words, planted, blank


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Fastest of ``repeat`` calls, and the result of the last."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def row(stage: str, method: str, measured_n: int, seconds: float, n: int, power: int = 1) -> dict:
    """A table row: the measured time, and the time at ``n`` (extrapolated as ``n**power``)."""
    scale = (n / measured_n) ** power if measured_n else 0.0
    kind = "linearly" if power == 1 else "quadratically"
    basis = "measured" if measured_n == n else f"{kind} from {measured_n:,}"
    return {
        "stage": stage,
        "method": method,
        "measured_n": measured_n,
        "measured_s": seconds,
        "us_per_item": 1e6 * seconds / measured_n if measured_n else 0.0,
        "n": n,
        "seconds_at_n": seconds * scale,
        "basis": basis,
    }


def bench_hash(n: int, sample: int, side: int, seed: int) -> dict:
    """Row of the hash stage: ``min(n, sample)`` distinct images hashed, extrapolated to ``n``."""
    rng = np.random.default_rng(seed)
    k, seconds = min(n, sample), 0.0
    for start in range(0, k, 1000):  # generate in chunks (untimed), hash them (timed)
        images = [texture(rng, side) for _ in range(min(1000, k - start))]
        seconds += timed(lambda images=images: [perceptual_hash(i) for i in images])[0]
    return row("hash", f"perceptual_hash, {side}px uint8", k, seconds, n)


def bench_search(n: int, max_distance: int, scan_max: int, repeat: int, seed: int):
    """Rows for the search and its baseline, the pairs found, and a summary of the checks."""
    words, planted, blank = synthetic_hashes(n, max_distance, seed)
    hashes = words.tolist()  # as callers pass them: Python ints
    seconds, pairs = timed(lambda: near_duplicate_pairs(hashes, max_distance), repeat)
    n_chunks = hash_search._plan(len(np.unique(words)), max_distance)
    method = f"multi-index, {n_chunks} chunks" if n_chunks else "blocked scan (planned)"
    if max_distance == 0:
        method = "equal hashes only"
    found = {(i, j) for i, j, _ in pairs}
    blank_pairs = sum(1 for i, j, d in pairs if i >= n - blank and d == 0)
    k = min(n, scan_max)
    scan_s, scanned = timed(lambda: _blocked_scan(words[:k], max_distance))
    baseline = row("search baseline", "blocked scan, all pairs", k, scan_s, n, 2)
    new = row("search", method, n, seconds, n)
    new["speedup_vs_baseline"] = baseline["seconds_at_n"] / seconds
    checks = {
        "max_distance": max_distance,
        "pairs_found": len(pairs),
        "planted_pairs": len(planted),
        "planted_found": len(planted & found),
        "blank_group": blank,
        "blank_pairs_found": blank_pairs,
        "blank_pairs_expected": blank * (blank - 1) // 2,
        "equal_to_baseline": (
            pairs == list(zip(*(a.tolist() for a in scanned), strict=True)) if k == n else None
        ),
    }
    return [new, baseline], hashes, pairs, checks


def bench_split(n: int, hashes: list[int], pairs: list[tuple], seed: int) -> list[dict]:
    """Rows of grouping (patients, copies, near pairs) and splitting ``n`` synthetic samples."""
    rng = np.random.default_rng(seed)
    patients = rng.integers(0, max(1, n // 2), n)  # about two knees per patient
    labels = rng.integers(0, 3, n)
    # as hygiene.find_copies: equal hashes stand for equal files (one digest), near pairs
    # (distance > 0) add a shared key
    pairs_of_keys = zip(patients.tolist(), hashes, strict=True)
    keys = [[f"patient:{p}", f"sha1:{h:016x}"] for p, h in pairs_of_keys]
    for i, j, d in pairs:
        if d > 0:
            keys[j].append(f"near:{i}")
            keys[i].append(f"near:{i}")
    group_s, groups = timed(lambda: group_ids(keys))
    split_s, _ = timed(lambda: assign_splits(labels, groups, 0.15, 0.15, seed=seed))
    return [
        row("group", f"group_ids, {len(np.unique(groups))} groups", n, group_s, n),
        row("split", "assign_splits", n, split_s, n),
    ]


def bench_cache(n: int, files: int, side: int, image_size: int, seed: int) -> list[dict]:
    """Rows of a cold and a warm cache on ``files`` JPEGs, extrapolated to ``n`` images."""
    from osteolightning.data.cache import PreprocessedCache  # imports Lightning: slow

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="osteo-prepare-") as tmp:
        paths = []
        for i in range(files):
            paths.append(Path(tmp) / "images" / f"{i:05d}.jpg")
            paths[-1].parent.mkdir(exist_ok=True)
            cv2.imwrite(str(paths[-1]), texture(rng, side), [cv2.IMWRITE_JPEG_QUALITY, 90])
        cache = PreprocessedCache(Path(tmp) / "cache", image_size)
        cold_s, _ = timed(lambda: cache.prepare(paths))
        warm_s, _ = timed(lambda: cache.load(paths))
    method = f"{side}px JPEG → {image_size}px, {cache.workers} threads"
    return [
        row("cache cold", f"prepare, {method}", files, cold_s, n),
        row("cache warm", "load (memoised SHA-1, checked entries)", files, warm_s, n),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="images (and hashes) to prepare")
    parser.add_argument("--max-distance", type=int, default=6, help="pHash bits of a near pair")
    parser.add_argument("--hash-sample", type=int, default=10_000, help="images hashed")
    parser.add_argument("--scan-max", type=int, default=100_000, help="hashes the scan runs on")
    parser.add_argument("--cache-files", type=int, default=200, help="files cached")
    parser.add_argument("--file-side", type=int, default=1024, help="side of the cached JPEGs")
    parser.add_argument("--image-size", type=int, default=160, help="preprocessed side")
    parser.add_argument("--repeat", type=int, default=3, help="search timings (fastest kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--short", action="store_true", help="tiny sizes: a few seconds")
    parser.add_argument("--out", type=Path, help="write the results to this .json or .csv")
    args = parser.parse_args(argv)
    if args.short:
        args.n, args.hash_sample, args.cache_files, args.file_side = 2000, 200, 8, 256
    if args.n < 100:
        parser.error(f"--n must be at least 100, not {args.n}")
    if min(args.hash_sample, args.scan_max, args.cache_files, args.repeat) < 1:
        parser.error("--hash-sample, --scan-max, --cache-files and --repeat must be >= 1")
    if not 0 <= args.max_distance <= 64:
        parser.error(f"--max-distance must be in [0, 64], not {args.max_distance}")
    return args


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    n = args.n
    rows = [bench_hash(n, args.hash_sample, args.image_size, args.seed)]
    search_rows, hashes, pairs, checks = bench_search(
        n, args.max_distance, args.scan_max, args.repeat, args.seed
    )
    rows += search_rows
    rows += bench_split(n, hashes, pairs, args.seed)
    rows += bench_cache(n, args.cache_files, args.file_side, args.image_size, args.seed)
    in_total = ("hash", "search", "group", "split", "cache cold")
    total = sum(r["seconds_at_n"] for r in rows if r["stage"] in in_total)
    result = {"n": n, "short": args.short, "stages": rows, "search": checks, "total_s": total}

    table = Table(title=f"Data preparation of N = {n:,} synthetic images")
    for col in ("stage", "method", "measured on", "µs/item", "s at N", "s at N is", "× base"):
        table.add_column(
            col, justify="left" if col in ("stage", "method", "s at N is") else "right"
        )
    for r in rows:
        speedup = r.get("speedup_vs_baseline")
        table.add_row(
            r["stage"],
            r["method"],
            f"{r['measured_n']:,}",
            f"{r['us_per_item']:.2f}",
            f"{r['seconds_at_n']:.2f}",
            r["basis"],
            f"{speedup:.0f}" if speedup else "",
        )
    console = Console()
    console.print(table)
    console.print(
        f"search (max_distance {checks['max_distance']}): {checks['pairs_found']:,} pairs; "
        f"planted {checks['planted_found']}/{checks['planted_pairs']} found; blank group "
        f"{checks['blank_pairs_found']}/{checks['blank_pairs_expected']} pairs; "
        f"equal to the baseline: {checks['equal_to_baseline']} (None: baseline on a sample)"
    )
    console.print(f"total (hash + search + group + split + cold cache) at N: {total:.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".csv":
            import csv

            with open(args.out, "w", newline="") as handle:
                fields = [*rows[0], "speedup_vs_baseline"]
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
        else:
            args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
