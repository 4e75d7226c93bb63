"""What every entry point does around fit/test: the final table, closing loggers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table


@rank_zero_only
def print_metrics_table(metrics: Mapping[str, Any], title: str = "Test metrics") -> None:
    """Print scalar metrics with their 95 % intervals as a table on the terminal."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95 % CI", justify="right")
    for key, value in metrics.items():
        if key.endswith("_ci95") or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        ci = metrics.get(f"{key}_ci95")
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value), ci_text)
    Console().print(table)
    matrix = next((v for k, v in metrics.items() if k.endswith("confusion_matrix")), None)
    if matrix is not None:
        Console().print(f"confusion matrix (rows: true class): {matrix}")


def close_loggers(loggers: Sequence[Logger]) -> None:
    """Finish W&B runs so the next job of a multirun starts its own run."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()
