"""A leaderboard's outputs: Markdown, CSV, JSON, the figure, its folder and W&B."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from osteolightning.ensemble.leaderboard.board import SHOWN, Fusions, Leaderboard, row_value
from osteolightning.ensemble.leaderboard.stats import lower_is_better
from osteolightning.errors import ConfigError
from osteolightning.runs import rundir
from osteolightning.utils.files import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: The leaderboard's figure, in its folder.
FIGURE = "leaderboard.png"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def mean_cell(row: dict[str, Any], metric: str) -> str:
    stats = row["mean"].get(metric)
    if not stats:
        return ""
    if stats["std"] is None:
        return f"{stats['mean']:.3f} (n=1)"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def pooled_cell(row: dict[str, Any], metric: str) -> str:
    value = row["pooled"].get(metric)
    if value is None:
        return ""
    ci = row["pooled_ci95"].get(metric)
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def shown_metrics(board: Leaderboard, limit: int = 5) -> list[str]:
    """The metrics of the Markdown table and the terminal: the sort metric first."""
    known = board.metrics
    shown = [m for m in (board.sort_by, *SHOWN) if m in known]
    shown += [m for m in known if m.startswith("test/dice") and m not in shown]
    return list(dict.fromkeys(shown))[:limit] or known[:limit]


def leaderboard_markdown(board: Leaderboard, summary: Sequence[str] = ()) -> str:
    """The leaderboard as Markdown: one table of rows, the comparisons' ``summary`` lines
    under it (see :mod:`.comparisons`), then the jobs that did not finish."""
    metrics = shown_metrics(board)
    pooled = any(row["pooled"] for row in board.rows)
    head = ["#", "name", "jobs", "seeds", "folds"]
    for m in metrics:
        short = m.removeprefix("test/")
        head.append(f"{short} (mean ± std)")
        if pooled:
            head.append(f"{short} (pooled [95 % CI])")
    lines = [
        f"Sorted by `{board.sort_by}` ({'lower' if lower_is_better(board.sort_by) else 'higher'}"
        " is better). mean ± std: over the finished jobs (seeds × folds); pooled: all their test "
        "predictions together, 95 % CI from a stratified bootstrap over images.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|",
    ]
    for row in board.rows:
        jobs = f"{row['n_finished']}/{row['n_jobs']}"
        cells = [
            str(row["rank"]),
            _md_escape(row["name"]),
            jobs,
            ",".join(map(str, row["seeds"])) or "-",
            ",".join(map(str, row["folds"])) or "-",
        ]
        for m in metrics:
            cells.append(mean_cell(row, m))
            if pooled:
                cells.append(pooled_cell(row, m))
        lines.append("| " + " | ".join(cells) + " |")
    if summary:
        lines += ["", f"Comparisons ({summary[0]} Details: comparisons.md):", ""]
        lines += [f"- {_md_escape(line)}" for line in summary[1:]]
    if board.unfinished:
        lines += ["", f"Jobs that did not finish ({len(board.unfinished)}):", ""]
        lines += ["| job | status | overrides | reason |", "|---|---|---|---|"]
        for job in board.unfinished:
            lines.append(
                f"| {_md_escape(job.name)} | {job.status} | "
                f"{_md_escape(' '.join(job.overrides))} | {_md_escape(job.error or '')} |"
            )
    for note in board.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def leaderboard_table(board: Leaderboard) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)`` of ``leaderboard.csv`` (and the W&B table): per metric ``_mean``,
    ``_std``, ``_n``, ``_pooled``, ``_pooled_ci95_low``, ``_pooled_ci95_high``; missing values are
    ``None`` (empty in the CSV)."""
    header = [
        "rank",
        "name",
        "kind",
        "method",
        "members",
        "overrides",
        "n_jobs",
        "n_finished",
        "n_failed",
        "n_incomplete",
        "seeds",
        "folds",
        "pooled_rows",
        "pooled_images",
    ]
    metrics = board.metrics
    for m in metrics:
        header += [
            f"{m}_mean",
            f"{m}_std",
            f"{m}_n",
            f"{m}_pooled",
            f"{m}_pooled_ci95_low",
            f"{m}_pooled_ci95_high",
        ]
    out = []
    for row in board.rows:
        line: list[Any] = [
            row["rank"],
            row["name"],
            row["kind"],
            row["method"] or "",
            "+".join(row["members"] or []),
            row["overrides"] or "",
            row["n_jobs"],
            row["n_finished"],
            row["n_failed"],
            row["n_incomplete"],
            " ".join(map(str, row["seeds"])),
            " ".join(map(str, row["folds"])),
            row["pooled_rows"],
            row["pooled_images"],
        ]
        for m in metrics:
            stats = row["mean"].get(m) or {}
            ci = row["pooled_ci95"].get(m) or [None, None]
            line += [
                _num(stats.get("mean")),
                _num(stats.get("std")),
                stats.get("n"),
                _num(row["pooled"].get(m)),
                _num(ci[0]),
                _num(ci[1]),
            ]
        out.append(line)
    return header, out


def _num(value: float | None) -> float | None:
    return None if value is None else float(value)


def leaderboard_json(board: Leaderboard) -> dict[str, Any]:
    """Everything the leaderboard knows, as JSON-ready data."""
    return {
        "sources": board.sources,
        "sort_by": board.sort_by,
        "class_names": board.class_names,
        "rows": board.rows,
        "unfinished": [
            {
                "job": j.name,
                "path": str(j.path),
                "status": j.status,
                "overrides": list(j.overrides),
                "seed": j.seed,
                "fold": j.fold,
                "reason": j.error,
            }
            for j in board.unfinished
        ],
        "notes": board.notes,
    }


def plot_leaderboard(board: Leaderboard, path: str | Path) -> Path | None:
    """``leaderboard.png``: the sort metric per row, mean ± std (error bar) and, where there is
    one, the pooled value with its 95 % interval. ``None`` (nothing written) without values."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    metric = board.sort_by
    rows = [r for r in board.rows if row_value(r, metric) is not None]
    if not rows:
        return None
    fig = Figure(figsize=(8, 1.2 + 0.45 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    for i, row in zip(y, rows, strict=True):
        stats = row["mean"].get(metric)
        colour = "tab:orange" if row["kind"] == "ensemble" else "tab:blue"
        if stats:
            ax.errorbar(
                stats["mean"],
                i + 0.12,
                xerr=stats["std"] or 0.0,
                fmt="o",
                color=colour,
                capsize=3,
            )
        if metric in row["pooled"]:
            ci = row["pooled_ci95"].get(metric) or [row["pooled"][metric]] * 2
            value = row["pooled"][metric]
            ax.errorbar(
                value,
                i - 0.12,
                xerr=[[value - ci[0]], [ci[1] - value]],
                fmt="s",
                color=colour,
                alpha=0.55,
                capsize=3,
            )
    ax.set_yticks(y, [str(r["name"]) for r in rows])
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} per configuration ({Path(board.sources[0]).name})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    proxies = [
        Line2D([], [], marker="o", color="black", label="mean ± std over jobs"),
        Line2D([], [], marker="s", color="black", alpha=0.55, label="pooled, 95 % CI"),
        Line2D([], [], color="tab:blue", label="configuration"),
        Line2D([], [], color="tab:orange", label="ensemble"),
    ]
    fig.legend(handles=proxies, loc="outside lower center", ncols=4, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def default_output_dir(sources: str | Path | Sequence[str | Path]) -> Path | None:
    """``<multirun>/leaderboard`` for a single source directory, else ``None``."""
    items = [sources] if isinstance(sources, str | Path) else list(sources)
    return Path(str(items[0])).expanduser() / rundir.LEADERBOARD if len(items) == 1 else None


def prepare_output_dir(out: str | Path, sources: Sequence[str], explicit: bool) -> Path:
    """The folder to write into: ``out`` when it is new, empty or a leaderboard of the same
    sources; otherwise ``out_1``, ``out_2``, ... (default folder) or an error (``explicit``).

    Raises:
        ConfigError: ``explicit`` and ``out`` holds files the leaderboard did not write (or
            the leaderboard of other sources).
    """
    out = Path(out)
    for i in range(1000):
        candidate = out if i == 0 else out.with_name(f"{out.name}_{i}")
        if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
            return candidate
        marker = rundir.read_json(candidate / rundir.LEADERBOARD_MARKER)
        if isinstance(marker, dict) and marker.get("sources") == list(sources):
            return candidate
        if explicit:
            what = "the leaderboard of other sources" if marker else "files it did not write"
            raise ConfigError(
                f"The output folder '{candidate}' holds {what}; refusing to write into it. "
                "Pass a new or empty folder as `out`, or leave `out` unset."
            )
    raise ConfigError(f"No free leaderboard folder next to '{out}' (tried 1000).")


def recorded_resamples(sources: Sequence[str | Path], out: str | Path | None) -> int | None:
    """The ``n_resamples`` a sweep's leaderboard was built with: its marker's, else the
    multirun's ``evaluation.n_resamples`` (``multirun.yaml``); ``None`` when neither says."""
    sources = list(sources)
    folder = Path(out) if out is not None else default_output_dir(sources)
    marker = rundir.read_json(folder / rundir.LEADERBOARD_MARKER) if folder else None
    if isinstance(marker, dict) and isinstance(marker.get("n_resamples"), int):
        return marker["n_resamples"]
    if len(sources) == 1 and (config := Path(sources[0]) / rundir.MULTIRUN).is_file():
        value = OmegaConf.select(OmegaConf.load(config), "evaluation.n_resamples", default=None)
        return value if isinstance(value, int) else None
    return None


def inputs_digest(sources: str | Path | Sequence[str | Path], options: dict[str, Any]) -> str:
    """A digest of everything a leaderboard is built from: each job's name, status and the
    files the board reads (metrics, predictions, validation predictions, members, error,
    overrides), the build options and the package version. Equal digests, equal leaderboard."""
    from importlib.metadata import PackageNotFoundError, version

    from osteolightning.ensemble.leaderboard.jobs import find_jobs

    try:
        package = version("osteolightning")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without install
        package = "unknown"
    digest = hashlib.sha256(json.dumps([package, options], sort_keys=True, default=str).encode())
    read = (rundir.METRICS, rundir.PREDICTIONS, rundir.VAL_PREDICTIONS, rundir.MEMBERS)
    for job in find_jobs(sources):
        digest.update(f"\0{job.name}\0{job.status}\0{job.overrides}".encode())
        for name in (*read, rundir.ERROR, rundir.CONFORMAL):
            file = job.path / name
            if file.is_file():
                digest.update(name.encode() + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def up_to_date(folder: str | Path, inputs: str) -> bool:
    """Whether ``folder`` holds a leaderboard built from ``inputs`` with all its files."""
    marker = rundir.read_json(Path(folder) / rundir.LEADERBOARD_MARKER)
    if not isinstance(marker, dict) or marker.get("inputs") != inputs:
        return False
    return all((Path(folder) / name).is_file() for name in marker.get("files", []))


def write_leaderboard(
    board: Leaderboard,
    out: str | Path | None = None,
    n_resamples: int | None = None,
    summary: Sequence[str] = (),
    extra: Callable[[Path], dict[str, Path]] | None = None,
    inputs: str | None = None,
) -> dict[str, Path]:
    """Write ``leaderboard.{csv,md,json,png}`` and ``ensemble_<method>_predictions.csv``.

    Args:
        board: from :func:`build_leaderboard`.
        out: the folder; ``None``: ``<multirun>/leaderboard`` (a folder already there that the
            leaderboard did not make, or made for other sources, gives ``leaderboard_1``, ...).
            A given ``out`` must be new, empty, or this leaderboard's own folder.
        n_resamples: the bootstrap resamples the board was built with, recorded in the marker
            so a rebuild reuses them (:func:`recorded_resamples`).
        summary: the comparisons' summary lines, written under the Markdown table.
        extra: writes more files into the folder (the comparisons, the report) and returns
            them by name; they are this leaderboard's files like the others.
        inputs: the digest of what the board was built from (:func:`inputs_digest`), recorded
            in the marker so an unchanged sweep's leaderboard is not rebuilt
            (:func:`up_to_date`).

    Returns:
        Output name → path.

    Raises:
        ConfigError: ``out`` given and taken (see :func:`prepare_output_dir`), or no ``out`` for
            several sources.
    """
    explicit = out is not None
    target = Path(out) if out is not None else default_output_dir(board.sources)
    if target is None:
        raise ConfigError("Several sources: pass `out` (a folder for the leaderboard).")
    folder = prepare_output_dir(target, board.sources, explicit)
    folder.mkdir(parents=True, exist_ok=True)
    old = rundir.read_json(folder / rundir.LEADERBOARD_MARKER)
    files: dict[str, Path] = {}
    header, rows = leaderboard_table(board)
    files["csv"] = atomic_write_csv(folder / "leaderboard.csv", header, rows)
    files["md"] = atomic_write_text(folder / "leaderboard.md", leaderboard_markdown(board, summary))
    files["json"] = atomic_write_json(folder / "leaderboard.json", leaderboard_json(board))
    if (png := plot_leaderboard(board, folder / FIGURE)) is not None:
        files["png"] = png
    for method, fusions in board.fused.items():
        files[f"ensemble_{method}"] = write_fused_predictions(
            folder / f"ensemble_{method}_predictions.csv", fusions
        )
    if extra is not None:
        files.update(extra(folder))
    if isinstance(old, dict):  # files of an earlier build of this leaderboard that are gone now
        for name in old.get("files", []):
            stale = folder / name
            if name not in {p.name for p in files.values()} and stale.is_file():
                stale.unlink()
    atomic_write_json(
        folder / rundir.LEADERBOARD_MARKER,
        {
            "sources": board.sources,
            "files": [p.name for p in files.values()],
            "n_resamples": n_resamples,
            # the digest of what it was built from (a sweep's callback skips an unchanged one)
            "inputs": inputs,
        },
    )
    return files


def write_fused_predictions(path: Path, fusions: Fusions) -> Path:
    """One ensemble's fused test predictions of every (seed, fold), in the predictions format
    with leading ``seed`` and ``fold`` columns (:func:`~osteolightning.runs.rundir.write_predictions`)."""
    units = [(unit, fused) for unit, fused in fusions]
    reps = [len(fused.paths) for _, fused in units]
    return rundir.write_predictions(
        path,
        [p for _, fused in units for p in fused.paths],
        np.concatenate([fused.labels for _, fused in units]),
        np.concatenate([fused.probs for _, fused in units]),
        units[0][1].class_names,
        preds=np.concatenate([fused.preds for _, fused in units]),
        extra={
            "seed": [u[0] for (u, _), n in zip(units, reps, strict=True) for _ in range(n)],
            "fold": [u[1] for (u, _), n in zip(units, reps, strict=True) for _ in range(n)],
        },
    )


def log_leaderboard_to_wandb(
    board: Leaderboard,
    files: dict[str, Path],
    project: str = "osteolightning",
    group: str | None = None,
    offline: bool = True,
    save_dir: str | Path | None = None,
    tables: dict[str, tuple[list[str], list[list[Any]]]] | None = None,
) -> bool:
    """Log the table (and figure) to a W&B run of its own in the sweep's group.

    Args:
        board: the leaderboard.
        files: from :func:`write_leaderboard` (the figure is logged when there is one).
        project: W&B project.
        group: W&B group; the multirun directory's name by default (the sweep's jobs' group).
        offline: log offline (``wandb sync`` later) instead of online.
        save_dir: where W&B writes (``<save_dir>/wandb``); the leaderboard folder by default.
        tables: more tables, name → ``(header, rows)`` (the comparisons). The figures
            ``critical_difference`` and the ``report`` (HTML) of ``files`` are logged too.

    Returns:
        Whether anything was logged (``False`` when wandb is not installed).
    """
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed: the leaderboard is not logged to W&B.")
        return False
    group = group or Path(board.sources[0]).name
    save_dir = Path(save_dir or files["csv"].parent)
    header, rows = leaderboard_table(board)
    run = wandb.init(
        project=project,
        group=group,
        job_type="leaderboard",
        name=f"leaderboard-{group}",
        dir=str(save_dir),
        mode="offline" if offline else "online",
        config={"sources": board.sources, "sort_by": board.sort_by},
        reinit="finish_previous",
    )
    try:
        payload: dict[str, Any] = {"leaderboard": wandb.Table(columns=header, data=rows)}
        if "png" in files:
            payload["leaderboard_plot"] = wandb.Image(str(files["png"]))
        for name, (columns, data) in (tables or {}).items():
            payload[name] = wandb.Table(columns=columns, data=data)
        if "critical_difference" in files:
            payload["critical_difference"] = wandb.Image(str(files["critical_difference"]))
        if "report" in files:
            payload["report"] = wandb.Html(files["report"].read_text(encoding="utf-8"))
        run.log(payload)
        run.summary["sort_by"] = board.sort_by
        if board.rows:
            run.summary["best"] = board.rows[0]["name"]
    finally:
        run.finish()
    return True


def print_leaderboard(board: Leaderboard, summary: Sequence[str] = ()) -> None:
    """Print the Markdown table and the comparisons' summary (the terminal shows it as is)."""
    print(leaderboard_markdown(board, summary), flush=True)
