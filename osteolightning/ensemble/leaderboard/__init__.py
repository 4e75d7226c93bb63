"""The leaderboard of a sweep: one row per configuration and per ensemble of configurations.

A *sweep* is a Hydra multirun directory (``logs/train/multiruns/<stamp>/``, one folder per
job) or any list of run directories. Each job is read from its files alone:

* ``.hydra/overrides.yaml`` (and ``.hydra/config.yaml`` for its seed and fold);
* its status: ``finished`` (``metrics.json``), ``failed`` (``error.json``, written by the
  multirun's failed-job handling) or ``incomplete`` (neither: still running, killed, or never
  started);
* ``metrics.json`` (flat ``test/*`` keys), ``predictions.csv`` (``path,label,prob_<class>...``)
  and, where present, ``val_predictions.csv``.

A *configuration* is a job's overrides minus ``seed``, ``data.fold``, ``hydra.*`` and
``paths.*``: the jobs of one configuration differ only in seed and fold. Its row holds

* mean ± standard deviation (``ddof=1``) over its finished jobs of every scalar ``test/*``
  metric of their ``metrics.json`` (classification and segmentation alike);
* for classifiers (``prob_`` columns), the *pooled out-of-fold* metrics: every test prediction of
  every fold and seed evaluated together, with 95 % intervals from a stratified *cluster*
  bootstrap that resamples images (an image tested under 3 seeds is drawn with its 3 rows,
  :func:`osteolightning.metrics.report.cluster_bootstrap_report`).

Ensemble rows fuse configurations (all, or ``members``) per (seed, fold) on that fold's test
split (rows matched by image path; members whose test sets differ are an error), with each
fusion method of :mod:`osteolightning.ensemble.fusion`; ``weighted_mean`` fits its weights on the
members' ``val_predictions.csv`` of the same (seed, fold) and is left out when a member lacks
one. Ensemble rows get the same statistics: mean ± std over (seed, fold) and pooled.

Failed and incomplete jobs are listed in every output and never stop the leaderboard.

Every pair of rows is then compared on the images both were tested on (paired bootstrap, DeLong,
McNemar, the corrected resampled t-test over (seed, fold), Holm over all pairs; the
critical-difference diagram over (seed, fold) blocks), and ``report.html`` gathers everything
in one self-contained file.

The package, by role: :mod:`.jobs` (reading and grouping jobs), :mod:`.stats` (mean ± std,
pooled intervals), :mod:`.board` (the rows; ensembles through
:func:`osteolightning.ensemble.members.fuse_runs`), :mod:`.outputs` (Markdown, CSV, JSON, PNG,
W&B), :mod:`.rowdata` (each row's predictions per (seed, fold), pairing two rows),
:mod:`.comparisons` (the tests) and :mod:`.comparison_outputs` (their files), :mod:`.study` and
:mod:`.report` (the audit, config differences, reproduction commands; ``report.html``) and
:mod:`.callback` (build, compare, write, print, and the Hydra callback of every multirun).

Example:
    >>> board = build_leaderboard("logs/train/multiruns/2026-01-01_00-00-00_000000")  # doctest: +SKIP
    >>> write_leaderboard(board)  # doctest: +SKIP
"""

from __future__ import annotations

from osteolightning.utils.imports import lazy_exports

#: the public names, imported from their submodule on first use: Hydra imports
#: :class:`.callback.LeaderboardCallback` in every run, which needs none of the statistics
_EXPORTS = {
    "Comparisons": ".comparisons",
    "Configuration": ".jobs",
    "EnsembleMismatchError": ".board",
    "Job": ".jobs",
    "Leaderboard": ".board",
    "LeaderboardCallback": ".callback",
    "build_leaderboard": ".board",
    "compare_leaderboard": ".comparisons",
    "configuration_key": ".jobs",
    "find_jobs": ".jobs",
    "group_configurations": ".jobs",
    "leaderboard_json": ".outputs",
    "leaderboard_markdown": ".outputs",
    "log_leaderboard_to_wandb": ".outputs",
    "mean_std": ".stats",
    "plot_leaderboard": ".outputs",
    "read_job": ".jobs",
    "run_leaderboard": ".callback",
    "write_comparisons": ".comparison_outputs",
    "write_leaderboard": ".outputs",
    "write_report": ".report",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
