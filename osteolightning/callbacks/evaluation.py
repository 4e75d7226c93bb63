"""The classification report writer: collects test predictions on every rank and writes
``predictions.csv``, ``metrics.json``, ``csv/test_metrics.csv``, ``figures/*.png`` and (with a
W&B logger) the W&B report. Before the test it predicts the validation split with the tested
checkpoint, for temperature scaling and ``val_predictions.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from osteolightning.callbacks import target_outputs as targets
from osteolightning.callbacks.best_checkpoint import best_checkpoint_of
from osteolightning.errors import ConfigError
from osteolightning.metrics.calibration import (
    T_MAX,
    T_MIN,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    probs_to_logits,
)
from osteolightning.metrics.figures import write_figures
from osteolightning.metrics.regression import WHO_CUTOFFS
from osteolightning.metrics.report import ECE_BINS, evaluation_report
from osteolightning.metrics.target_report import bootstrap_mean, target_report
from osteolightning.runs import rundir
from osteolightning.utils.files import atomic_write_csv, atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def gather_rows(trainer: L.Trainer, rows: list[Any]) -> list[Any]:
    """``(index, ...)`` rows of every rank, keyed by sample index (a padded duplicate counts
    once) and sorted by it; every rank gets them all."""
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        buckets: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(buckets, rows)
        rows = [row for bucket in buckets for row in bucket]
    return sorted({row[0]: row for row in rows}.values(), key=lambda r: r[0])


class ReportWriter(L.Callback):
    """What every test-report writer shares: rows collected per rank and gathered on rank 0
    (keyed by sample index), the facts of the tested run, and ``metrics.json`` read back.

    Subclasses append ``(index, ...)`` tuples to ``self._rows`` in ``on_test_batch_end`` and set
    ``output_dir`` and ``ckpt_path``.
    """

    output_dir: Path
    ckpt_path: str | None
    _rows: list[Any]

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics written by the last test run (read from ``metrics.json``, so the values
        are there in the launching process also when the test ran in spawned DDP workers)."""
        return rundir.read_metrics(self.output_dir)

    def _gather(self, trainer: L.Trainer) -> list[Any]:
        return gather_rows(trainer, self._rows)

    def _run_facts(self, trainer: L.Trainer) -> dict[str, Any]:
        """The test loss, the tested checkpoint's best validation score, its path, world size."""
        facts: dict[str, Any] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k == "test/loss"
        }
        best = best_checkpoint_of(trainer)
        if best is not None and best.monitor and best.best_model_score is not None:
            facts[f"{best.monitor}_best"] = float(best.best_model_score)  # the tested one's
        ckpt = getattr(trainer, "ckpt_path", None)
        facts["ckpt_path"] = str(ckpt) if ckpt else self.ckpt_path
        facts["world_size"] = trainer.world_size
        return facts

    @staticmethod
    def _csv_dir(trainer: L.Trainer, output_dir: Path) -> Path:
        return next(
            (Path(lg.log_dir) for lg in trainer.loggers if isinstance(lg, CSVLogger)),
            output_dir / rundir.CSV_DIR,
        )

    def _write_metrics_table(self, trainer: L.Trainer, metrics: dict[str, Any]) -> None:
        csv_dir = self._csv_dir(trainer, self.output_dir)
        atomic_write_csv(csv_dir / rundir.TEST_METRICS_CSV, METRIC_COLUMNS, metric_rows(metrics))


@dataclass(frozen=True)
class SplitPredictions:
    """A checkpoint's probabilities on one split, one row per image in sample-index order.

    Attributes:
        indices: ``(N,)`` indices into the DataModule's ``samples``.
        paths: ``N`` image paths.
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` softmax probabilities (uncalibrated; TTA as at test time).
        target_pred: ``(N,)`` the regression head's predictions, or None (no head).
    """

    indices: np.ndarray
    paths: list[str]
    labels: np.ndarray
    probs: np.ndarray
    target_pred: np.ndarray | None = None


def predict_split(
    trainer: L.Trainer, pl_module: L.LightningModule, split: str = "val"
) -> SplitPredictions | None:
    """The module's current weights on one split of ``trainer.datamodule``, every rank's share
    gathered (so every rank gets every image).

    The module's ``predict_step`` gives ``{"probs", "index"}`` (as
    :class:`~osteolightning.models.classifier.KneeClassifier` does); it runs in eval mode under
    the trainer's precision, on the trainer's device.

    Returns:
        The predictions, or ``None`` when the split is not set up or holds no image (e.g.
        ``osteo-eval``, whose every image is a test image).
    """
    datamodule = trainer.datamodule
    dataset = getattr(datamodule, "datasets", {}).get(split)
    if dataset is None or not len(dataset):
        return None
    loader = getattr(datamodule, f"{split}_dataloader")()
    was_training = pl_module.training
    pl_module.eval()
    rows = []
    with torch.inference_mode(), trainer.precision_plugin.predict_step_context():
        for batch_idx, batch in enumerate(loader):
            batch = trainer.strategy.batch_to_device(batch)
            out = pl_module.predict_step(batch, batch_idx)
            probs = out["probs"].float().cpu().numpy()
            value = out.get("target_pred")
            values = [None] * len(probs) if value is None else value.float().cpu().tolist()
            rows += list(zip(out["index"].tolist(), probs, values, strict=True))
    pl_module.train(was_training)
    rows = gather_rows(trainer, rows)
    indices = np.array([r[0] for r in rows], dtype=np.int64)
    samples = datamodule.samples
    has_values = rows[0][2] is not None
    return SplitPredictions(
        indices=indices,
        paths=[str(samples[i].path) for i in indices],
        labels=np.array([samples[i].label for i in indices], dtype=np.int64),
        probs=np.stack([r[1] for r in rows]),
        target_pred=np.array([r[2] for r in rows], dtype=np.float64) if has_values else None,
    )


def fit_validation_temperature(predictions: SplitPredictions) -> float:
    """A temperature (Guo et al. 2017) fitted on validation predictions.

    ``predict_step`` returns softmax probabilities; ``log(probs)`` equals the logits up to a
    per-sample constant, which softmax ignores (:func:`probs_to_logits`), so fitting on it is
    fitting on the logits.
    """
    temperature = fit_temperature(probs_to_logits(predictions.probs), predictions.labels)
    log.info(
        f"Temperature scaling: T={temperature:.4f} fitted on {len(predictions.labels)} "
        "validation images."
    )
    return temperature


@rank_zero_only
def write_validation_predictions(
    output_dir: str | Path,
    predictions: SplitPredictions,
    class_names: list[str],
    temperature: float | None = None,
) -> Path:
    """Write ``val_predictions.csv`` (the ``predictions.csv`` format) into ``output_dir``.

    The fusion ``weighted_mean`` of ``osteo-ensemble`` / ``osteo-eval`` fits its weights on
    these files; they are calibrated with the test predictions' ``temperature``, if any.
    """
    probs = predictions.probs
    if temperature is not None:
        probs = apply_temperature(probs_to_logits(probs), temperature)
    trailing = None
    if predictions.target_pred is not None:
        trailing = {"target_pred": predictions.target_pred.tolist()}
    path = rundir.write_predictions(
        Path(output_dir) / rundir.VAL_PREDICTIONS,
        predictions.paths,
        predictions.labels,
        probs,
        class_names,
        trailing=trailing,
    )
    log.info(f"Wrote {len(predictions.labels)} validation predictions to {path}")
    return path


class EvaluationWriter(ReportWriter):
    """Gathers ``(index, label, probs)`` of every test image across ranks, then on rank 0 writes
    one row per image to ``predictions.csv`` and the bootstrap report to ``metrics.json``.

    When the test starts (the tested checkpoint's weights loaded), it predicts the validation
    split once: with ``temperature_scaling`` it fits the temperature applied to the test
    probabilities on those predictions, and with ``validation_predictions`` it writes them to
    ``val_predictions.csv`` (what the ``weighted_mean`` ensembles fit their weights on). Data
    without a validation split (``osteo-eval``) skips both.

    Args:
        output_dir: the run directory.
        n_resamples: bootstrap resamples for the 95 % intervals.
        seed: bootstrap seed.
        ckpt_path: the evaluated checkpoint, recorded when the trainer was given a model object.
        temperature_scaling: fit a temperature on the validation split before testing.
        temperature: a fixed temperature to apply to the test probabilities. ``None``: the one
            recorded in the ``metrics.json`` of the run that wrote ``ckpt_path``, when that run
            fitted one on this very checkpoint (see :func:`recorded_temperature`).
        validation_predictions: write ``val_predictions.csv`` when there is a validation split.
        coverage: a regression head's split-conformal intervals are calibrated on the
            validation split at this coverage (``osteo-eval``: the calibration recorded for
            ``ckpt_path`` in its run's ``conformal.json``).
        who_cutoffs: the WHO cut-offs ``[osteoporosis, normal]`` of the T-score.
    """

    def __init__(
        self,
        output_dir: str | Path,
        n_resamples: int = 1000,
        seed: int = 0,
        ckpt_path: str | None = None,
        temperature_scaling: bool = False,
        temperature: float | None = None,
        validation_predictions: bool = True,
        coverage: float = 0.9,
        who_cutoffs: Sequence[float] = WHO_CUTOFFS,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.coverage, self.who_cutoffs = float(coverage), [float(c) for c in who_cutoffs]
        self.conformal = targets.recorded_conformal(ckpt_path) if ckpt_path else None
        self.ckpt_path = ckpt_path
        self.n_resamples, self.seed = n_resamples, seed
        self.temperature_scaling = bool(temperature_scaling)
        self.validation_predictions = bool(validation_predictions)
        if temperature is not None and not T_MIN <= float(temperature) <= T_MAX:
            raise ConfigError(
                f"Expected argument `evaluation.temperature` in [{T_MIN}, {T_MAX}], "
                f"but got {temperature}."
            )
        if temperature is not None and temperature_scaling:
            raise ConfigError(
                "Pass either evaluation.temperature (a fixed temperature) or "
                "evaluation.temperature_scaling=true (fit one on the validation split), not both."
            )
        if temperature is None and ckpt_path is not None:
            temperature = recorded_temperature(ckpt_path)
        self.temperature = None if temperature is None else float(temperature)
        self._rows: list[tuple[Any, ...]] = []

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        spec = targets.regression_spec(pl_module)
        if not (self.temperature_scaling or self.validation_predictions or spec):
            return
        validation = predict_split(trainer, pl_module, "val")
        if validation is None:
            if self.temperature_scaling:
                log.warning(
                    "evaluation.temperature_scaling is ignored: the data has no validation "
                    "split (osteo-eval tests every image). Set evaluation.temperature, or let "
                    "it come from the checkpoint's run (its metrics.json)."
                )
            return
        if self.temperature_scaling:
            self.temperature = fit_validation_temperature(validation)
        if spec is not None and validation.target_pred is not None:
            truth = targets.split_targets(trainer.datamodule, "val", validation.indices)
            self.conformal = targets.calibrate(
                truth, validation.target_pred, self.coverage, spec.target
            )
            if self.conformal is not None:
                ckpt = getattr(trainer, "ckpt_path", None) or self.ckpt_path
                targets.write_conformal(self.output_dir, self.conformal, spec.target, ckpt)
        if self.validation_predictions:
            names = list(pl_module.hparams.class_names)
            write_validation_predictions(self.output_dir, validation, names, self.temperature)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        probs = outputs["probs"].float().cpu().numpy()
        n = len(probs)
        truth = outputs.get("target")
        truth = [None] * n if truth is None else truth.float().cpu().tolist()
        value = outputs.get("target_pred")
        value = [None] * n if value is None else value.float().cpu().tolist()
        extras = {k: v.float().cpu().tolist() for k, v in (outputs.get("extras") or {}).items()}
        per_image = [{k: v[j] for k, v in extras.items()} for j in range(n)]
        for i, y, p, t, v, e in zip(
            outputs["index"].tolist(), outputs["labels"].tolist(), probs, truth, value, per_image,
            strict=True,
        ):  # fmt: skip
            self._rows.append((i, y, p, t, v, e))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self._gather(trainer)
        if trainer.global_rank != 0 or not rows:
            return
        class_names = list(pl_module.hparams.class_names)
        labels = np.array([r[1] for r in rows])
        raw = np.stack([r[2] for r in rows])
        calibration: dict[str, float] = {}
        probs = raw
        if self.temperature is not None:
            probs = apply_temperature(probs_to_logits(raw), self.temperature)
            calibration = {
                "temperature": self.temperature,
                "test/ece_uncalibrated": expected_calibration_error(labels, raw, ECE_BINS),
            }
        samples = trainer.datamodule.samples
        spec = targets.regression_spec(pl_module)
        values = self._target_values(spec, rows, samples)
        trailing = (
            targets.prediction_columns(spec, class_names, *values, self.conformal)
            if values
            else None
        )
        rundir.write_predictions(
            self.output_dir / rundir.PREDICTIONS,
            [str(samples[r[0]].path) for r in rows],
            labels,
            probs,
            class_names,
            trailing=trailing,
        )
        report = evaluation_report(
            labels, probs, class_names, prefix="test/", n_resamples=self.n_resamples, seed=self.seed
        )
        if values:
            truth, predicted, t_truth = values
            report.update(
                target_report(
                    spec.target,
                    truth,
                    predicted,
                    labels,
                    class_names,
                    t_truth=t_truth,
                    t_predicted=targets.t_score_values(spec, predicted),
                    who=spec.who,
                    cutoffs=self.who_cutoffs,
                    conformal=self.conformal,
                    n_resamples=self.n_resamples,
                    seed=self.seed,
                )
            )
        report.update(self._extras(rows))
        report.update(targets.value_counts(pl_module, trainer.datamodule))
        metrics = {**report, **calibration, **self._run_facts(trainer)}
        atomic_write_json(self.output_dir / rundir.METRICS, metrics)
        log.info(f"Wrote {len(rows)} predictions and metrics to {self.output_dir}")
        # Everything below derives from metrics.json, which is safely on disk already.
        self._write_metrics_table(trainer, metrics)
        figures = write_figures(labels, probs, class_names, self.output_dir / rundir.FIGURES)
        if values:
            figures.update(
                targets.write_target_figures(
                    self.output_dir / rundir.FIGURES, spec, *values, self.conformal
                )
            )
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                try:
                    log_to_wandb(logger.experiment, metrics, labels, probs, class_names, figures)
                except Exception as err:  # noqa: BLE001 - any W&B failure (network, disk, API)
                    log.warning(
                        f"Could not log the test report to W&B ({err!r}); "
                        f"metrics.json and figures/ are complete."
                    )

    @staticmethod
    def _target_values(
        spec: Any, rows: list[tuple[Any, ...]], samples: list[Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """``(truth, predicted, true T-scores of a BMD target)`` of the test rows, or None
        without a regression head."""
        if spec is None or rows[0][4] is None:
            return None
        truth = np.array([np.nan if r[3] is None else r[3] for r in rows], dtype=np.float64)
        predicted = np.array([r[4] for r in rows], dtype=np.float64)
        t_truth = None
        if spec.target != "t_score" and spec.has_t_score:
            t_truth = np.array(
                [np.nan if samples[r[0]].t_score is None else samples[r[0]].t_score for r in rows]
            )
        return truth, predicted, t_truth

    def _extras(self, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
        """Per-image values a model returned (``extras``, e.g. a segmentation Dice): their mean
        over the test images with its bootstrap interval, as ``test/<name>``."""
        out: dict[str, Any] = {}
        for name in rows[0][5]:
            values = np.array([r[5][name] for r in rows], dtype=np.float64)
            values = values[~np.isnan(values)]
            if len(values):
                out[f"test/{name}"] = float(values.mean())
                out[f"test/{name}_ci95"] = bootstrap_mean(values, self.n_resamples, self.seed)
                out[f"test/{name}_n"] = int(len(values))
        return out


#: Columns of ``test_metrics.csv`` and of the W&B metrics table.
METRIC_COLUMNS = ["metric", "value", "ci_low", "ci_high"]


def metric_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """Scalar metrics as ``[metric, value, ci_low, ci_high]`` rows; ``None`` (an empty CSV cell)
    where a value or interval is undefined."""
    rows = []
    for key, value in metrics.items():
        if key.endswith("_ci95") or isinstance(value, bool | str | list | dict):
            continue
        ci = metrics.get(f"{key}_ci95") or [None, None]
        rows.append([key, value, *ci])
    return rows


def log_to_wandb(
    run: Any,
    metrics: dict[str, Any],
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    figures: dict[str, Path],
) -> None:
    """Log the metrics table, the figures and W&B's interactive confusion matrix and ROC."""
    import wandb

    run.log(
        {
            "test/metrics_table": wandb.Table(columns=METRIC_COLUMNS, data=metric_rows(metrics)),
            **{f"test/figures/{name}": wandb.Image(str(path)) for name, path in figures.items()},
            "test/plots/confusion_matrix": wandb.plot.confusion_matrix(
                y_true=labels.tolist(), preds=probs.argmax(axis=1).tolist(), class_names=class_names
            ),
            "test/plots/roc": _wandb_roc(labels, probs, class_names),
        }
    )


def _wandb_roc(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> Any:
    """W&B's one-vs-rest ROC chart (the ``wandb.plot.roc_curve`` preset, whose own function
    needs pandas and mislabels classes when one is absent from ``labels``)."""
    import wandb
    from sklearn.metrics import roc_curve

    rows = []
    for c, name in enumerate(class_names):
        positive = labels == c
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, probs[:, c])
            rows += [[name, float(f), float(t)] for f, t in zip(fpr, tpr, strict=True)]
    return wandb.plot_table(
        "wandb/area-under-curve/v0",
        wandb.Table(columns=["class", "fpr", "tpr"], data=rows),
        {"x": "fpr", "y": "tpr", "class": "class"},
        {
            "title": "ROC, one vs rest",
            "x-axis-title": "False positive rate",
            "y-axis-title": "True positive rate",
        },
    )


def recorded_temperature(ckpt_path: str | Path) -> float | None:
    """The temperature that ``osteo-train`` fitted for this checkpoint, if any.

    Read from its run's ``metrics.json``, and only when that file's ``ckpt_path`` is this same
    checkpoint: a temperature fitted for ``best.ckpt`` says nothing about ``last.ckpt``.
    """
    path = Path(ckpt_path).resolve()
    metrics_file = rundir.run_of_checkpoint(path) / rundir.METRICS
    recorded = rundir.read_json(metrics_file)
    if not isinstance(recorded, dict):
        return None
    temperature, tested = recorded.get("temperature"), recorded.get("ckpt_path")
    if temperature is None:
        return None
    if not tested or Path(tested).resolve() != path:
        log.warning(
            f"{metrics_file} records temperature {temperature} for '{tested}', not for "
            f"'{path}'; evaluating uncalibrated (set evaluation.temperature to apply one)."
        )
        return None
    log.info(f"Applying the temperature T={temperature:.4f} recorded in {metrics_file}.")
    return float(temperature)
