"""The terminal's view of a run: the final metrics table with its intervals, and plain tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

#: Metrics shown first, in this order (suffixes of keys such as ``test/acc``).
MAIN_METRICS = (
    "acc",
    "balanced_acc",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "auroc_macro",
    "kappa",
    "kappa_quadratic",
    "grade_mae",
    "acc_within1",
    "ece",
    "ece_uncalibrated",
    "temperature",
    "dice",
    "iou",
    "hd95",
    "loss",
)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@rank_zero_only
def print_metrics_table(metrics: Mapping[str, Any], title: str = "Test metrics") -> None:
    """Print scalar metrics with their 95 % intervals on the terminal: the summary metrics
    (accuracy ... AUROC, kappas, ECE, temperature) first, then per-class and other rows."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95 % CI", justify="right")
    keys = [k for k, v in metrics.items() if not k.endswith("_ci95") and _is_scalar(v)]
    rank = {name: i for i, name in enumerate(MAIN_METRICS)}
    main = sorted(
        (k for k in keys if k.rsplit("/", 1)[-1] in rank), key=lambda k: rank[k.rsplit("/", 1)[-1]]
    )
    for i, key in enumerate([*main, *[k for k in keys if k not in main]]):
        if i == len(main) and main:
            table.add_section()
        value = metrics[key]
        ci = metrics.get(f"{key}_ci95")
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value), ci_text)
    Console().print(table)
    matrix = next((v for k, v in metrics.items() if k.endswith("confusion_matrix")), None)
    if matrix is not None:
        Console().print(f"confusion matrix (rows: true class): {matrix}")
    absent = next((v for k, v in metrics.items() if k.endswith("absent_classes")), None)
    if absent:
        Console().print(
            f"classes without test images (undefined, left out of the macro averages): {absent}"
        )


@rank_zero_only
def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    styles: Sequence[str | None] | None = None,
    footer: str | None = None,
) -> None:
    """Print a table of text cells (first column left-aligned, the others right-aligned).

    Args:
        title: the table's title.
        columns: column headers.
        rows: the cells, one sequence per row.
        styles: a rich style per row (``None``: plain), e.g. ``"bold red"`` for a difference.
        footer: a line printed under the table.
    """
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for i, row in enumerate(rows):
        table.add_row(*row, style=styles[i] if styles else None)
    Console().print(table)
    if footer:
        Console().print(footer)
