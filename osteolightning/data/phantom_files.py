"""The knee phantom as a data set on disk: ``generate_phantom`` writes it, ``ensure_phantom``
writes it once per configuration and reuses it after.

Files: ``images/K00000.png`` (8- or 16-bit), ``masks/K00000.png``, ``manifest.csv`` and
``phantom.json`` (see :mod:`osteolightning.data.phantom` for the knees themselves). Every knee's
random numbers come from ``SeedSequence(seed, spawn_key=(1, index))`` and the cohort's from
``spawn_key=(0,)``, so output is byte-identical for any number of worker processes.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image

from osteolightning.data.phantom import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    MANIFEST_COLUMNS,
    MASK_LABELS,
    MIN_SIZE,
    KneeSubject,
    check_int,
    draw_cohort,
    generate_knee,
)
from osteolightning.errors import ConfigError
from osteolightning.utils.progress import progress

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- validation


def _validate(n: object, seed: object, size: object, bit_depth: object, workers: object) -> dict:
    params = {
        "n": check_int("n", n, 1, "a positive integer"),
        "seed": check_int("seed", seed, 0, "a non-negative integer"),
        "size": check_int("size", size, MIN_SIZE, f"an integer >= {MIN_SIZE}"),
        "bit_depth": bit_depth,
    }
    if isinstance(bit_depth, bool) or bit_depth not in (8, 16):
        raise ConfigError(
            f"Expected argument `bit_depth` to be one of (8, 16), but got {bit_depth!r}."
        )
    if workers is not None:
        check_int("workers", workers, 1, "a positive integer or None")
    return params


def _knee_task(task: tuple[int, int, int, int, KneeSubject, str]) -> dict[str, str]:
    """Render one knee and write its image and mask; returns its manifest row (worker entry)."""
    seed, index, size, bit_depth, subject, out_dir = task
    knee = generate_knee(seed, index, size, person=subject)
    stem = f"K{index:05d}"
    if bit_depth == 16:
        pixels = Image.fromarray(np.round(knee.image * 65535.0).astype(np.uint16))
    else:
        pixels = Image.fromarray(np.round(knee.image * 255.0).astype(np.uint8))
    pixels.save(Path(out_dir) / "images" / f"{stem}.png", format="PNG")
    Image.fromarray(knee.mask).save(Path(out_dir) / "masks" / f"{stem}.png", format="PNG")
    return {
        "image": f"images/{stem}.png", "mask": f"masks/{stem}.png",
        "label": CLASS_NAMES[knee.label], "t_score": f"{knee.t_score:.2f}",
        "bmd": f"{knee.bmd:.4f}", "patient_id": knee.patient_id,
        "side": knee.side, "age": str(knee.age), "sex": knee.sex, "bmi": f"{knee.bmi:.1f}",
    }  # fmt: skip


def _run_tasks(tasks: list[tuple], workers: int | None) -> list[dict[str, str]]:
    """Render every knee (in worker processes), showing progress (a bar or a few log lines)."""
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    rows: list[dict[str, str]] = []
    if workers == 1:
        with progress(len(tasks), "Generating phantom knees", log) as advance:
            for task in tasks:
                rows.append(_knee_task(task))
                advance()
        return rows
    # "spawn": safe even when the caller holds threads or a CUDA context (fork is not).
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(tasks) // (4 * workers)))
    try:
        with (
            ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool,
            progress(len(tasks), "Generating phantom knees", log) as advance,
        ):
            for row in pool.map(_knee_task, tasks, chunksize=chunk):
                rows.append(row)
                advance()
        return rows
    except BrokenProcessPool as err:
        raise RuntimeError(
            "A phantom worker process died. Out of memory, or a script without the "
            "`if __name__ == '__main__':` guard that spawned processes need? "
            "`workers=1` renders in this process."
        ) from err


def _identity(params: dict) -> dict:
    return {"generator": GENERATOR_VERSION, **params}


def generate_phantom(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    size: int = 256,
    bit_depth: int = 8,
    workers: int | None = None,
) -> Path:
    """Generate ``n`` knees into ``out_dir`` (images, masks, ``manifest.csv``, ``phantom.json``).

    Args:
        out_dir: a folder that does not exist yet or is empty.
        n: number of knees (images).
        seed: seed of the whole data set; equal arguments give byte-identical files.
        size: side length of the square images in pixels (>= 64).
        bit_depth: 8 or 16 bits per image pixel (masks are always 8-bit).
        workers: processes; ``None`` uses ``os.cpu_count()``, 1 renders in this process. More
            than one are started with "spawn", so a calling script needs the usual
            ``if __name__ == "__main__":`` guard.

    Returns:
        Path of ``manifest.csv``; its columns are ``MANIFEST_COLUMNS``, paths relative to it.

    Raises:
        ConfigError: an argument is out of range, or ``out_dir`` is not empty.
        RuntimeError: a worker process died.
    """
    params = _validate(n, seed, size, bit_depth, workers)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"Expected `out_dir` to be an empty or new folder, but '{out}' is not empty."
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    start = time.perf_counter()
    subjects = draw_cohort(params["n"], params["seed"])
    tasks = [
        (params["seed"], i, params["size"], bit_depth, s, str(out)) for i, s in enumerate(subjects)
    ]
    rows = _run_tasks(tasks, workers)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    counts = {c: sum(r["label"] == c for r in rows) for c in CLASS_NAMES}
    meta = {
        **_identity(params),
        "class_counts": counts,
        "mask_labels": MASK_LABELS,
        "bmd_formula": "bmd = 1.0 + 0.12 * t_score (g/cm^2)",
        "who_thresholds": {
            "normal": "T >= -1",
            "osteopenia": "-2.5 < T < -1",
            "osteoporosis": "T <= -2.5",
        },
    }
    # Written last: its presence marks a complete data set.
    (out / "phantom.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info(
        "Generated %d phantom knees (%s) in '%s' in %.1f s.",
        params["n"],
        counts,
        out,
        time.perf_counter() - start,
    )
    return manifest


def _read_identity(out: Path) -> dict | None:
    try:
        meta = json.loads((out / "phantom.json").read_text())
    except (OSError, ValueError):
        return None
    return {k: meta.get(k) for k in ("generator", "n", "seed", "size", "bit_depth")}


def _is_complete(out: Path, n: int) -> bool:
    try:
        with (out / "manifest.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return False
    return len(rows) == n and all(
        (out / r["image"]).is_file() and (out / r["mask"]).is_file() for r in rows
    )


def ensure_phantom(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    size: int = 256,
    bit_depth: int = 8,
    workers: int | None = None,
) -> Path:
    """Return the manifest of the phantom in ``out_dir``, generating it first if needed.

    A complete data set with the same parameters is reused as is. Otherwise the set is generated
    into a temporary sibling folder and moved into place with one ``os.replace``, so an
    interrupted run never leaves a folder that looks complete. Concurrent callers (e.g. one per
    DDP rank) are safe: the first to finish wins and the others reuse its result.

    Args:
        out_dir: where the data set lives; must not exist, be empty, or hold a phantom.
        n, seed, size, bit_depth, workers: as for :func:`generate_phantom`.

    Returns:
        Path of ``out_dir/manifest.csv``.

    Raises:
        ConfigError: bad arguments, or ``out_dir`` holds other data or a phantom with other
            parameters (nothing is ever deleted).
    """
    params = _validate(n, seed, size, bit_depth, workers)
    out = Path(out_dir)
    wanted, found = _identity(params), _read_identity(out)
    if found is not None:
        if found != wanted:
            raise ConfigError(
                f"Phantom folder '{out}' holds a data set generated with {found}, but "
                f"{wanted} was requested. Use another folder or delete this one."
            )
        if not _is_complete(out, params["n"]):
            raise ConfigError(
                f"Phantom folder '{out}' is incomplete (files listed in manifest.csv "
                "are missing). Delete it to generate it again."
            )
        log.info("Reusing phantom data set in '%s'.", out)
        return out / "manifest.csv"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"Expected `out_dir` to be new, empty or a phantom data set, but '{out}' "
            "holds other files (no phantom.json)."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set is meant to be shared
        generate_phantom(tmp, **params, workers=workers)
        try:
            os.replace(tmp, out)  # atomic; only replaces a missing or empty folder
        except OSError:
            if _read_identity(out) != wanted or not _is_complete(out, params["n"]):
                raise
            log.info("Another process generated '%s' first; using its data set.", out)
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder only
        raise
    log.info("Phantom data set ready in '%s'.", out)
    return out / "manifest.csv"
