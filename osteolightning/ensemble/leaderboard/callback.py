"""Build, write, print and log a leaderboard with its comparisons and study report
(``osteo-ensemble sweep=``), and the Hydra callback that does it when a multirun ends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from osteolightning.runs import rundir
from osteolightning.utils.logging import get_logger

if TYPE_CHECKING:
    from osteolightning.ensemble.leaderboard.board import Leaderboard
    from osteolightning.ensemble.leaderboard.comparisons import Comparisons

# The statistics, figures and report are imported where a leaderboard is built: Hydra
# instantiates LeaderboardCallback in every run, single runs included.

log = get_logger(__name__)


def _test_keys(metrics: Sequence[str] | None) -> list[str] | None:
    if metrics is None:
        return None
    return [m if m.startswith("test/") else f"test/{m}" for m in map(str, metrics)]


def run_leaderboard(
    sources: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    wandb: bool = False,
    wandb_project: str = "osteolightning",
    wandb_offline: bool = True,
    wandb_group: str | None = None,
    compare: bool = True,
    report: bool = True,
    alpha: float = 0.05,
    compare_metrics: Sequence[str] | None = None,
    inputs: str | None = None,
    **options: Any,
) -> tuple[Leaderboard, dict[str, Path]]:
    """Build, write, print and (optionally) log a leaderboard with its pairwise comparisons and
    its study report: what ``osteo-ensemble sweep=...`` and :class:`LeaderboardCallback` do.

    Args:
        sources: multirun or run directories.
        out: output folder (see :func:`write_leaderboard`).
        wandb: log the tables and figures to W&B.
        wandb_project: W&B project.
        wandb_offline: W&B offline mode.
        wandb_group: W&B group; the multirun directory's name by default.
        compare: compare every pair of rows (``comparisons.{csv,md,json}``,
            ``critical_difference.png``, the summary under the table).
        report: write the self-contained study report ``report.html``.
        alpha: significance level of the comparisons (after Holm).
        compare_metrics: the metrics compared (``balanced_acc``, ``kappa_quadratic``,
            ``grade_mae``, ...; with or without ``test/``); ``None``: balanced accuracy, macro
            F1 and macro AUROC (Dice for segmentation).
        inputs: the digest of the sources and options (:func:`inputs_digest`), recorded so an
            unchanged sweep's leaderboard is not rebuilt.
        **options: :func:`build_leaderboard`'s options (``n_resamples`` and ``seed`` also
            drive the comparisons' paired bootstrap).

    Returns:
        ``(board, files)``.
    """
    from osteolightning.ensemble.leaderboard.board import build_leaderboard
    from osteolightning.ensemble.leaderboard.comparison_outputs import (
        comparisons_table,
        write_comparisons,
    )
    from osteolightning.ensemble.leaderboard.comparisons import compare_leaderboard
    from osteolightning.ensemble.leaderboard.outputs import (
        log_leaderboard_to_wandb,
        print_leaderboard,
        write_leaderboard,
    )
    from osteolightning.ensemble.leaderboard.report import write_report

    board = build_leaderboard(sources, **options)
    comparisons: Comparisons | None = None
    if compare:
        comparisons = compare_leaderboard(
            board,
            alpha=alpha,
            n_resamples=int(options.get("n_resamples", 1000)),
            confidence=float(options.get("confidence", 0.95)),
            seed=int(options.get("seed", 0)),
            metrics=_test_keys(compare_metrics),
        )

    def extra(folder: Path) -> dict[str, Path]:
        files = write_comparisons(comparisons, folder) if comparisons is not None else {}
        if report:
            files["report"] = write_report(board, comparisons, folder)
        return files

    summary = comparisons.summary if comparisons is not None else []
    files = write_leaderboard(
        board,
        out,
        n_resamples=options.get("n_resamples", 1000),
        summary=summary,
        extra=extra,
        inputs=inputs,
    )
    print_leaderboard(board, summary)
    log.info(f"Leaderboard of {len(board.rows)} rows written to {files['csv'].parent}")
    if wandb:
        tables = {"comparisons": comparisons_table(comparisons)} if comparisons else None
        log_leaderboard_to_wandb(
            board,
            files,
            project=wandb_project,
            group=wandb_group,
            offline=wandb_offline,
            tables=tables,
        )
    return board, files


# --------------------------------------------------------------------------- Hydra callback


class LeaderboardCallback(HydraCallback):
    """Hydra callback: when a multirun ends, build the leaderboard of its directory.

    Configured in ``osteolightning/conf/hydra/default.yaml`` under
    ``hydra.callbacks.leaderboard``, so every ``osteo-train -m`` sweep ends with
    ``<multirun>/leaderboard/`` and the Markdown table on the terminal. A sweep run again with
    nothing changed (a finished sweep's command repeated) finds its leaderboard built from the same
    inputs (:func:`inputs_digest`: the jobs' files and the options) and does not rebuild it. It logs
    and never raises: a leaderboard failure must not hide the sweep's results.

    Args:
        enabled: ``false`` switches it off (``hydra.callbacks.leaderboard.enabled=false``).
        tasks: the ``task_name`` values it runs for (``train``, ``segment``).
        methods, members, sort_by, top_k: as :func:`build_leaderboard`.
        n_resamples: bootstrap resamples; ``None``: the sweep's ``evaluation.n_resamples``.
        wandb: log to W&B; ``None``: when the sweep's jobs log to W&B (``logger.wandb``), with
            their project and offline setting.
        compare, report, alpha: as :func:`run_leaderboard` (comparisons and ``report.html``
            on by default).
    """

    def __init__(
        self,
        enabled: bool = True,
        tasks: Sequence[str] = ("train", "segment"),
        methods: Sequence[str] | None = None,
        members: Sequence[str] | None = None,
        sort_by: str | None = None,
        top_k: int | None = None,
        n_resamples: int | None = None,
        wandb: bool | None = None,
        compare: bool = True,
        report: bool = True,
        alpha: float = 0.05,
        compare_metrics: Sequence[str] | None = None,
    ) -> None:
        self.enabled, self.tasks = bool(enabled), [str(t) for t in tasks]
        self.methods = None if methods is None else [str(m) for m in methods]
        self.members = None if members is None else [str(m) for m in members]
        self.sort_by, self.top_k, self.n_resamples, self.wandb = sort_by, top_k, n_resamples, wandb
        self.compare, self.report, self.alpha = bool(compare), bool(report), float(alpha)
        self.compare_metrics = (
            None if compare_metrics is None else [str(m) for m in compare_metrics]
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or str(config.get("task_name")) not in self.tasks:
            return
        from osteolightning.ensemble.leaderboard.board import EnsembleMismatchError
        from osteolightning.ensemble.leaderboard.outputs import inputs_digest, up_to_date

        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            evaluation = config.get("evaluation") or {}
            wandb_cfg = OmegaConf.select(config, "logger.wandb", default=None)
            use_wandb = self.wandb if self.wandb is not None else wandb_cfg is not None
            options = dict(
                members=self.members,
                sort_by=self.sort_by,
                top_k=self.top_k,
                n_resamples=int(self.n_resamples or evaluation.get("n_resamples", 1000)),
                seed=int(evaluation.get("seed", 0)),
                wandb=bool(use_wandb),
                wandb_project=str((wandb_cfg or {}).get("project") or "osteolightning"),
                wandb_offline=bool((wandb_cfg or {}).get("offline", True)),
                compare=self.compare,
                report=self.report,
                alpha=self.alpha,
                compare_metrics=self.compare_metrics,
            )
            inputs = inputs_digest(sweep_dir, {**options, "methods": self.methods})
            if up_to_date(sweep_dir / rundir.LEADERBOARD, inputs):
                log.info(
                    f"The leaderboard of {sweep_dir} is up to date (its jobs' predictions, "
                    "metrics and configs and its options are unchanged): not rebuilt."
                )
                return
            try:
                run_leaderboard(sweep_dir, methods=self.methods, inputs=inputs, **options)
            except EnsembleMismatchError as err:  # e.g. a sweep over the split: no ensembles
                log.warning(f"{err} The leaderboard is written without ensemble rows.")
                run_leaderboard(sweep_dir, methods=[], inputs=inputs, **options)
        except Exception as err:  # never hide the sweep's results behind a leaderboard error
            log.error(
                f"The leaderboard of the sweep failed ({type(err).__name__}: {err}); the jobs' "
                "results are intact. Build it again with `osteo-ensemble sweep=<multirun dir>`.",
                exc_info=err,
            )
