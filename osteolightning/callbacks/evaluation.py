"""Collects test predictions on every rank and writes ``predictions.csv``, ``metrics.json``,
``csv/test_metrics.csv``, ``figures/*.png`` and (with a W&B logger) the W&B report; predicts
the validation split with the best checkpoint (temperature scaling, ``val_predictions.csv``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

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
from osteolightning.metrics.report import ECE_BINS, evaluation_report
from osteolightning.utils.files import atomic_write_csv, atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


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
        path = self.output_dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _gather(self, trainer: L.Trainer) -> list[Any]:
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            buckets: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(buckets, self._rows)
            rows = [row for bucket in buckets for row in bucket]
        else:
            rows = self._rows
        # Keyed by sample index: a padded duplicate (if any sampler padded) counts once.
        return sorted({row[0]: row for row in rows}.values(), key=lambda r: r[0])

    def _run_facts(self, trainer: L.Trainer) -> dict[str, Any]:
        """The test loss, the tested checkpoint's best validation score, its path, world size."""
        facts: dict[str, Any] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k == "test/loss"
        }
        best = trainer.checkpoint_callback
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
            output_dir / "csv",
        )


class EvaluationWriter(ReportWriter):
    """Gathers ``(index, label, probs)`` of every test image across ranks, then on rank 0 writes
    one row per image to ``predictions.csv`` and the bootstrap report to ``metrics.json``.

    Args:
        output_dir: the run directory.
        n_resamples: bootstrap resamples for the 95 % intervals.
        seed: bootstrap seed.
        ckpt_path: the evaluated checkpoint, recorded when the trainer was given a model object.
        temperature_scaling: fit a temperature on the validation split before testing
            (``osteo-train``, which sets :attr:`temperature` via
            :func:`fit_validation_temperature`).
        temperature: a fixed temperature to apply to the test probabilities. ``None``: the one
            recorded in the ``metrics.json`` of the run that wrote ``ckpt_path``, when that run
            fitted one on this very checkpoint (see :func:`recorded_temperature`).
    """

    def __init__(
        self,
        output_dir: str | Path,
        n_resamples: int = 1000,
        seed: int = 0,
        ckpt_path: str | None = None,
        temperature_scaling: bool = False,
        temperature: float | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.ckpt_path = ckpt_path
        self.n_resamples, self.seed = n_resamples, seed
        self.temperature_scaling = temperature_scaling
        if temperature is not None and not T_MIN <= float(temperature) <= T_MAX:
            raise ConfigError(
                f"Expected argument `evaluation.temperature` in [{T_MIN}, {T_MAX}], "
                f"but got {temperature}."
            )
        if temperature is None and ckpt_path is not None:
            temperature = recorded_temperature(ckpt_path)
        self.temperature = None if temperature is None else float(temperature)
        self._rows: list[tuple[int, int, np.ndarray]] = []

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
        for i, y, p in zip(
            outputs["index"].tolist(), outputs["labels"].tolist(), probs, strict=True
        ):
            self._rows.append((i, y, p))

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
        self._write_predictions(trainer, rows, probs, class_names)
        report = evaluation_report(
            labels, probs, class_names, prefix="test/", n_resamples=self.n_resamples, seed=self.seed
        )
        metrics = {**report, **calibration, **self._run_facts(trainer)}
        atomic_write_json(self.output_dir / "metrics.json", metrics)
        log.info(f"Wrote {len(rows)} predictions and metrics to {self.output_dir}")
        # Everything below derives from metrics.json, which is safely on disk already.
        csv_dir = self._csv_dir(trainer, self.output_dir)
        atomic_write_csv(csv_dir / "test_metrics.csv", METRIC_COLUMNS, metric_rows(metrics))
        figures = write_figures(labels, probs, class_names, self.output_dir / "figures")
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                try:
                    log_to_wandb(logger.experiment, metrics, labels, probs, class_names, figures)
                except Exception as err:  # noqa: BLE001 - any W&B failure (network, disk, API)
                    log.warning(
                        f"Could not log the test report to W&B ({err!r}); "
                        f"metrics.json and figures/ are complete."
                    )

    def _write_predictions(
        self,
        trainer: L.Trainer,
        rows: list[tuple[int, int, np.ndarray]],
        probs: np.ndarray,
        class_names: list[str],
    ) -> None:
        samples = trainer.datamodule.samples
        write_predictions_csv(
            self.output_dir / PREDICTIONS,
            [str(samples[i].path) for i, _, _ in rows],
            np.array([y for _, y, _ in rows]),
            probs,
            class_names,
        )


#: The test and validation predictions of a run (``path,label,prob_<class>...,prediction``).
PREDICTIONS, VAL_PREDICTIONS = "predictions.csv", "val_predictions.csv"


def write_predictions_csv(
    path: str | Path,
    paths: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
) -> Path:
    """Write one ``path,label,prob_<class>...,prediction`` row per image, atomically.

    Args:
        path: the CSV file.
        paths: ``N`` image paths.
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` class probabilities (written with 6 decimals).
        class_names: ``K`` class names in label-index order.

    Returns:
        ``path``.
    """
    header = ["path", "label", *[f"prob_{c}" for c in class_names], "prediction"]
    return atomic_write_csv(
        path,
        header,
        [
            [name, class_names[int(y)], *[f"{v:.6f}" for v in p], class_names[int(p.argmax())]]
            for name, y, p in zip(paths, labels, probs, strict=True)
        ],
    )


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

    Read from ``<run>/metrics.json`` for ``<run>/checkpoints/<name>.ckpt``, and only when that
    file's ``ckpt_path`` is this same checkpoint: a temperature fitted for ``best.ckpt`` says
    nothing about ``last.ckpt``.
    """
    path = Path(ckpt_path).resolve()
    metrics_file = path.parent.parent / "metrics.json"
    if not metrics_file.is_file():
        return None
    recorded = json.loads(metrics_file.read_text())
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


@dataclass(frozen=True)
class SplitPredictions:
    """A checkpoint's probabilities on one split, one row per image in sample-index order.

    Attributes:
        indices: ``(N,)`` indices into the DataModule's ``samples``.
        paths: ``N`` image paths.
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` softmax probabilities (uncalibrated; TTA as at test time).
    """

    indices: np.ndarray
    paths: list[str]
    labels: np.ndarray
    probs: np.ndarray


def predict_validation(
    trainer: L.Trainer, model: L.LightningModule, datamodule: Any, ckpt_path: str | None
) -> SplitPredictions | None:
    """Predict the validation split with ``ckpt_path`` (the current weights when ``None``).

    Under DDP each rank predicts its share and the shares are gathered, so every rank gets
    every image. ``predict_step`` must return ``{"probs", "index"}`` as
    :class:`~osteolightning.models.classifier.KneeClassifier` does.

    Returns:
        The predictions, or ``None`` when this process cannot see the whole validation split:
        with a spawning strategy (``ddp_spawn``) the split lives in the worker processes, and
        a partial set of predictions is never returned (a warning says so).
    """
    expected = len(datamodule.datasets["val"]) if "val" in datamodule.datasets else None
    if expected is None:
        log.warning(
            "The validation split is not set up in this process (a spawning strategy such as "
            "ddp_spawn keeps it in its workers): no validation predictions."
        )
        return None
    outputs = trainer.predict(
        model, dataloaders=datamodule.val_dataloader(), ckpt_path=ckpt_path, weights_only=True
    )
    rows = [
        (i, p)
        for batch in outputs or []
        for i, p in zip(batch["index"].tolist(), batch["probs"].float().cpu().numpy(), strict=True)
    ]
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        buckets: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(buckets, rows)
        rows = [row for bucket in buckets for row in bucket]
    rows = sorted(dict(rows).items())  # keyed by sample index: a padded duplicate counts once
    if len(rows) != expected:
        log.warning(
            f"Predicted {len(rows)} of the {expected} validation images in this process "
            f"(strategy {type(trainer.strategy).__name__}): no validation predictions."
        )
        return None
    indices = np.array([i for i, _ in rows], dtype=np.int64)
    k = len(datamodule.class_names)
    return SplitPredictions(
        indices=indices,
        paths=[str(datamodule.samples[i].path) for i in indices],
        labels=np.array([datamodule.samples[i].label for i in indices], dtype=np.int64),
        probs=np.stack([p for _, p in rows]) if rows else np.zeros((0, k)),
    )


def fit_validation_temperature(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: Any,
    ckpt_path: str | None,
    predictions: SplitPredictions | None = None,
) -> float:
    """Fit a temperature on the validation split's predictions of ``ckpt_path``.

    ``predict_step`` returns softmax probabilities; ``log(probs)`` equals the logits up to a
    per-sample constant, which softmax ignores (:func:`probs_to_logits`), so fitting on it is
    fitting on the logits. Under DDP each rank predicts its share and the shares are gathered.

    Args:
        trainer: the trainer that fitted ``model``.
        model: the classifier.
        datamodule: its DataModule (set up).
        ckpt_path: the checkpoint to predict with (``None``: the current weights).
        predictions: the validation predictions of ``ckpt_path`` when already made (by
            :func:`predict_validation`); predicted here otherwise.

    Raises:
        ConfigError: the validation split is empty or not visible in this process.
    """
    if predictions is None:
        predictions = predict_validation(trainer, model, datamodule, ckpt_path)
    if predictions is None or not len(predictions.labels):
        raise ConfigError(
            "Temperature scaling needs a non-empty validation split predicted in this process "
            "(not under ddp_spawn: use trainer.strategy=ddp); set "
            "evaluation.temperature_scaling=false or give the data a validation split."
        )
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

    Args:
        output_dir: the run directory.
        predictions: from :func:`predict_validation`.
        class_names: ``K`` class names in label-index order.
        temperature: the temperature applied to the test probabilities (``None``: none).

    Returns:
        The file written.
    """
    probs = predictions.probs
    if temperature is not None:
        probs = apply_temperature(probs_to_logits(probs), temperature)
    path = write_predictions_csv(
        Path(output_dir) / VAL_PREDICTIONS,
        predictions.paths,
        predictions.labels,
        probs,
        class_names,
    )
    log.info(f"Wrote {len(predictions.labels)} validation predictions to {path}")
    return path
