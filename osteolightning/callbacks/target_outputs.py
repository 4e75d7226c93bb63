"""What the report writer adds for a model with a regression head (T-score or BMD): the
split-conformal calibration on the validation split, the predictions' target columns, the
figures, and the counts of unknown targets and imputed covariates.

The calibration is written to the run's ``conformal.json`` with the checkpoint it belongs to,
so that ``osteo-eval`` (which has no validation split) and ``osteo-predict`` give the same
checkpoint's intervals (:func:`recorded_conformal`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from osteolightning.errors import ConfigError
from osteolightning.metrics.regression import SplitConformal, who_category
from osteolightning.metrics.regression_figures import write_regression_figures
from osteolightning.runs import rundir
from osteolightning.utils.files import atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def regression_spec(pl_module: Any) -> Any:
    """The module's :class:`~osteolightning.models.targets.TargetSpec` when it has a regression
    head, else ``None``."""
    spec = getattr(pl_module, "spec", None)
    return spec if spec is not None and spec.enabled else None


def split_targets(datamodule: Any, split: str, indices: np.ndarray) -> np.ndarray:
    """The true target values ``(n,)`` (NaN unknown) of the images ``indices`` of ``split``."""
    dataset = datamodule.datasets[split]
    if dataset.targets is None:
        return np.full(len(indices), np.nan)
    by_index = dict(zip(np.asarray(dataset.indices).tolist(), dataset.targets, strict=True))
    return np.array([by_index[int(i)] for i in indices], dtype=np.float64)


def calibrate(
    truth: np.ndarray, predicted: np.ndarray, coverage: float, target: str
) -> SplitConformal | None:
    """Split-conformal intervals from the validation split's known targets; ``None`` (with a
    warning) when there are too few of them for ``coverage``."""
    known = ~np.isnan(truth)
    try:
        conformal = SplitConformal.fit(truth[known], predicted[known], coverage)
    except ConfigError as err:
        log.warning(f"No prediction intervals for `{target}`: {err}")
        return None
    log.info(
        f"Conformal intervals for `{target}`: +/- {conformal.quantile:.4f} at coverage "
        f"{coverage}, calibrated on {conformal.n_calibration} validation images."
    )
    return conformal


@rank_zero_only
def write_conformal(
    output_dir: str | Path, conformal: SplitConformal, target: str, ckpt_path: str | None
) -> None:
    """Record the calibration in ``<run>/conformal.json`` with the tested checkpoint."""
    atomic_write_json(
        Path(output_dir) / rundir.CONFORMAL,
        {
            "target": target,
            "coverage": conformal.coverage,
            "quantile": conformal.quantile,
            "n_calibration": conformal.n_calibration,
            "ckpt_path": ckpt_path,
        },
    )


def recorded_conformal(ckpt_path: str | Path) -> SplitConformal | None:
    """The calibration recorded for this very checkpoint in its run's ``conformal.json``, or
    ``None`` (no file, or one written for another checkpoint of the run)."""
    path = Path(ckpt_path).resolve()
    recorded = rundir.read_json(rundir.run_of_checkpoint(path) / rundir.CONFORMAL)
    if not isinstance(recorded, dict):
        return None
    tested = recorded.get("ckpt_path")
    if not tested or Path(tested).resolve() != path:
        return None
    try:
        return SplitConformal(
            float(recorded["coverage"]),
            float(recorded["quantile"]),
            int(recorded["n_calibration"]),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        log.warning(f"Ignoring {rundir.CONFORMAL} of '{path}': {err}")
        return None


def t_score_values(spec: Any, values: np.ndarray) -> np.ndarray | None:
    """Target values → T-scores (``None`` when the target has no T-score)."""
    return np.asarray(spec.t_scores(values), dtype=np.float64) if spec.has_t_score else None


def prediction_columns(
    spec: Any,
    class_names: list[str],
    truth: np.ndarray,
    predicted: np.ndarray,
    t_truth: np.ndarray | None,
    conformal: SplitConformal | None,
) -> dict[str, Any]:
    """The trailing columns of ``predictions.csv``: ``<target>``, ``<target>_pred``, its
    interval ``<target>_low`` / ``_high``, for a BMD target the same for ``t_score``, and
    ``who_prediction`` (the WHO category of the predicted T-score)."""
    name = spec.target
    columns: dict[str, Any] = {name: truth.tolist(), f"{name}_pred": predicted.tolist()}
    low = high = None
    if conformal is not None:
        low, high = conformal.interval(predicted)
        columns.update({f"{name}_low": low.tolist(), f"{name}_high": high.tolist()})
    t_pred = t_score_values(spec, predicted)
    if t_pred is not None and name != "t_score":
        columns.update(
            {"t_score": (t_truth if t_truth is not None else np.full(len(truth), np.nan)).tolist()}
        )
        columns["t_score_pred"] = t_pred.tolist()
        if low is not None:
            columns["t_score_low"] = t_score_values(spec, low).tolist()
            columns["t_score_high"] = t_score_values(spec, high).tolist()
    if t_pred is not None and spec.who:
        categories = who_category(np.round(t_pred, 6), spec.cutoffs)
        columns["who_prediction"] = [class_names[c] for c in categories]
    return columns


def write_target_figures(
    out_dir: Path,
    spec: Any,
    truth: np.ndarray,
    predicted: np.ndarray,
    t_truth: np.ndarray | None,
    conformal: SplitConformal | None,
) -> dict[str, Path]:
    """``figures/<target>/{predicted_vs_true,bland_altman}.png`` on the known values (and
    ``figures/t_score/`` for a BMD target with a reference)."""
    figures: dict[str, Path] = {}
    pairs = [(spec.target, truth, predicted, conformal)]
    t_pred = t_score_values(spec, predicted)
    if spec.target != "t_score" and t_pred is not None and t_truth is not None:
        pairs.append(("t_score", t_truth, t_pred, None))
    for name, t, p, calibrated in pairs:
        known = ~np.isnan(t)
        if known.sum() < 2:
            continue
        low = high = None
        if calibrated is not None:
            low, high = (v[known] for v in calibrated.interval(p))
        written = write_regression_figures(t[known], p[known], out_dir / name, name, low, high)
        figures.update({f"{name}/{key}": path for key, path in written.items()})
    return figures


def value_counts(pl_module: Any, datamodule: Any) -> dict[str, int]:
    """Training images without the target (left out of the regression loss) and imputed
    covariate values per split (``train/<target>_n_missing``, ``train/imputed_<covariate>``,
    ``test/imputed_<covariate>``), where known."""
    out: dict[str, int] = {}
    spec = regression_spec(pl_module)
    counts = getattr(pl_module, "target_counts", None)
    if spec is not None and counts is not None:
        out[f"train/{spec.target}_n"], out[f"train/{spec.target}_n_missing"] = counts
    encoder = getattr(pl_module, "covariate_encoder", None)
    if encoder is None:
        return out
    if encoder.fitted:
        for name, n in zip(encoder.names, encoder.n_imputed, strict=True):
            out[f"train/imputed_{name}"] = int(n)
    if "test" in getattr(datamodule, "datasets", {}):
        _, covariates = datamodule.split_values("test")
        if covariates.shape[1] == len(encoder.names):
            for name, n in zip(encoder.names, np.isnan(covariates).sum(axis=0), strict=True):
                out[f"test/imputed_{name}"] = int(n)
    return out
