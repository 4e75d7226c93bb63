"""``osteo-train``: compose the config, instantiate data, model, trainer; fit, then test.

Example:
    osteo-train                                     # EfficientNet-Lite0 on the knee phantom
    osteo-train data=folder data.root=/data/knees trainer=gpu
    osteo-train -m model/backbone=resnet18,densenet121 seed=0,1,2   # a failed job is skipped
    osteo-train -m hparams_search=knee_optuna                       # Optuna on val macro-F1
    osteo-train -m hydra/launcher=slurm trainer=ddp model/backbone=resnet18,xception
    osteo-train resume=auto                         # continue the killed run of this config
"""

from __future__ import annotations

import math
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from osteolightning.callbacks import RunArtifacts
from osteolightning.callbacks.evaluation import (
    fit_validation_temperature,
    predict_validation,
    write_validation_predictions,
)
from osteolightning.callbacks.writers import build_writer
from osteolightning.utils import runs
from osteolightning.utils.config import CONFIG_DIR, instantiate_list, to_container
from osteolightning.utils.logging import get_logger
from osteolightning.utils.run import close_loggers, print_metrics_table
from osteolightning.utils.sweep import finish_wandb, record_failed_job

log = get_logger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit and test one run described by ``cfg``.

    Returns:
        ``(metrics, objects)``: the final metrics (also in ``metrics.json``) and the
        instantiated datamodule, model and trainer.

    Raises:
        ConfigError: the output directory holds another run's results, or ``resume`` names a
            run that cannot be continued (see :func:`osteolightning.utils.runs.start_run`).
    """
    run_dir = runs.start_run(cfg)  # may redirect paths.output_dir: before anything else
    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    writer = build_writer(cfg.evaluation, cfg.paths.output_dir)
    callbacks = [
        *instantiate_list(cfg.get("callbacks"), "callbacks"),
        RunArtifacts(cfg.paths.output_dir, to_container(cfg)),
        writer,
    ]
    loggers = instantiate_list(cfg.get("logger"), "logger")
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    runs.restore_csv_history(loggers, cfg.get("ckpt_path"))
    for logger in loggers:
        logger.log_hyperparams(to_container(cfg))
    runs.record_loggers(run_dir, loggers)
    weights_only = not cfg.get("allow_unsafe_pickle", False)
    try:
        with runs.explain_unpickling():
            trainer.fit(
                model,
                datamodule=datamodule,
                ckpt_path=cfg.get("ckpt_path"),
                weights_only=weights_only,
            )
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            best = (
                trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            )
            if not best:
                log.warning("No best checkpoint was saved; testing the weights of the last step.")
            # One pass of the tested checkpoint over the validation split, for the temperature
            # and val_predictions.csv (classifiers only: they have predict_proba).
            validation = (
                predict_validation(trainer, model, datamodule, best or None)
                if callable(getattr(model, "predict_proba", None))
                else None
            )
            if writer.temperature_scaling:  # Guo et al. 2017, fitted on the validation split
                writer.temperature = fit_validation_temperature(
                    trainer, model, datamodule, best or None, predictions=validation
                )
            trainer.test(
                model,
                datamodule=datamodule,
                ckpt_path=best or None,
                verbose=False,
                weights_only=True,  # our own checkpoint: plain types only
            )
            print_metrics_table(writer.metrics)
            metrics.update(writer.metrics)
            if validation is not None:  # what the ensemble's weighted_mean fits its weights on
                write_validation_predictions(
                    cfg.paths.output_dir,
                    validation,
                    list(model.hparams.class_names),
                    getattr(writer, "temperature", None),
                )
        runs.finish_run(run_dir)
    except BaseException:
        runs.stop_heartbeat()  # the run stays `running`: resume=auto may continue it at once
        finish_wandb(exit_code=1)  # the W&B run shows as failed, not as finished
        raise
    finally:
        close_loggers(loggers)
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}


def optimized_value(metrics: dict[str, Any], key: str | None) -> float | None:
    """The value a sweeper optimises: ``metrics[key]`` as a finite float, else ``None``
    (with a warning naming the run's metrics when ``key`` is not one of them)."""
    if not key:
        return None
    if key not in metrics:
        known = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, int | float)))
        log.warning(f"optimized_metric={key!r} is not a metric of this run; it has: {known}.")
        return None
    value = float(metrics[key])
    if not math.isfinite(value):
        log.warning(f"The optimized metric {key} is {value}; a sweeper records a failed trial.")
        return None
    return value


def run_job(cfg: DictConfig) -> float | None:
    """One job of ``osteo-train`` / ``osteo-segment``: train, return the optimised metric.

    In a multirun (``-m``: a grid, Optuna, SLURM) a job that fails does not stop the others:
    its exception is logged with the traceback and saved as ``error.json`` in the job's
    directory (:func:`osteolightning.utils.sweep.record_failed_job`), and the job returns
    ``None``, which the Optuna sweeper records as a failed trial (a NaN would make it raise).
    A single run raises as usual. Either way no W&B run stays open for the next job.
    """
    try:
        metrics, _ = train(cfg)
        return optimized_value(metrics, cfg.get("optimized_metric"))
    except Exception as err:
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        record_failed_job(err, cfg)
        return None
    finally:
        finish_wandb(exit_code=1)  # a no-op unless a failure left a W&B run open


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric for sweepers."""
    return run_job(cfg)


if __name__ == "__main__":
    main()
