"""``osteo-train``: compose the config, instantiate data, model, trainer; fit, then test.

Example:
    osteo-train                                     # EfficientNet-Lite0 on the knee phantom
    osteo-train data=folder data.root=/data/knees trainer=gpu
    osteo-train -m model/backbone=resnet18,densenet121 seed=0,1,2   # a failed job is skipped
    osteo-train -m hparams_search=knee_optuna                       # Optuna on val macro-F1
    osteo-train -m hydra/launcher=slurm trainer=ddp model/backbone=resnet18,xception
    osteo-train resume=auto                         # continue the killed run of this config
    osteo-train reproduce=logs/train/runs/<run>     # run it again, compare with its metrics
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
from osteolightning.callbacks.best_checkpoint import best_checkpoint_of
from osteolightning.callbacks.last_checkpoint import release_resume_state
from osteolightning.callbacks.writers import build_saliency, build_writer
from osteolightning.models.checkpointing import check_checkpoint_file, explain_unpickling
from osteolightning.models.saliency import cam_layer_of
from osteolightning.reproduce import reproduce_run
from osteolightning.runs import lifecycle
from osteolightning.runs.checks import check_config, check_monitors
from osteolightning.runs.failures import user_errors
from osteolightning.runs.sweep import record_failed_job
from osteolightning.utils.config import CONFIG_DIR, instantiate_list, to_container, warn_conflicts
from osteolightning.utils.console import print_metrics_table
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def data_inputs(model_cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """What the model takes from the data's training split, for each key its config leaves
    ``null``: the images per class (``class_counts``, the class-weighted loss), the target
    values (``target_train``, the regression head's standardisation) and the covariates
    (``covariates_train``, their standardisation and imputation; with them the resolved
    covariate list, ``all`` spelled out, and its coding)."""
    wanted = [
        k
        for k in ("class_counts", "target_train", "covariates_train")
        if k in model_cfg and model_cfg[k] is None
    ]
    if not wanted:
        return {}
    datamodule.setup("fit")  # the split; the trainer's own setup call then finds it done
    inputs: dict[str, Any] = {}
    if "class_counts" in wanted:
        inputs["class_counts"] = datamodule.class_counts("train")
    targets, covariates = datamodule.split_values("train")
    if "target_train" in wanted and model_cfg.get("t_score_weight", 0):
        datamodule.require_target()  # an absent column names the columns the data has
        inputs["target_train"] = targets.tolist()
    if "covariates_train" in wanted and model_cfg.get("covariates"):
        inputs["covariates_train"] = covariates.tolist()
        inputs["covariates"] = list(datamodule.covariates)
        inputs["covariate_coding"] = datamodule.covariate_coding()
    return inputs


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit and test one run described by ``cfg``.

    Returns:
        ``(metrics, objects)``: the final metrics (also in ``metrics.json``) and the
        instantiated datamodule, model and trainer.

    Raises:
        ConfigError: the output directory holds another run's results, or ``resume`` names a
            run that cannot be continued (see :func:`osteolightning.runs.lifecycle.start_run`).
    """
    check_config(cfg)  # before the run claims a directory: a typo costs nothing
    if cfg.get("ckpt_path"):  # a checkpoint cut short is named now, not by Lightning's loader
        check_checkpoint_file(cfg.ckpt_path, cfg.get("allow_unsafe_pickle", False))
    with lifecycle.session(cfg) as run:  # may redirect paths.output_dir: before anything else
        warn_conflicts(cfg)
        L.seed_everything(cfg.seed, workers=True)
        datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
        model: L.LightningModule = hydra.utils.instantiate(
            cfg.model, **data_inputs(cfg.model, datamodule)
        )
        check_monitors(cfg, model.monitorable)
        writer = build_writer(cfg.evaluation, cfg.paths.output_dir)
        callbacks = [
            *instantiate_list(cfg.get("callbacks"), "callbacks"),
            RunArtifacts(cfg.paths.output_dir, to_container(cfg)),
            writer,  # the saliency report follows: it adds to the writer's metrics.json
            *build_saliency(cfg.get("saliency"), cam_layer_of(cfg), cfg.paths.output_dir),
        ]
        trainer: L.Trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=callbacks, logger=run.loggers
        )
        with explain_unpickling():
            trainer.fit(
                model,
                datamodule=datamodule,
                ckpt_path=cfg.get("ckpt_path"),
                weights_only=not cfg.get("allow_unsafe_pickle", False),
            )
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test"):
            checkpoint = best_checkpoint_of(trainer)
            best = checkpoint.best_model_path if checkpoint else ""
            if not best:
                log.warning("No best checkpoint was saved; testing the weights of the last step.")
            # our own checkpoint: plain types only (weights_only)
            trainer.test(
                model,
                datamodule=datamodule,
                ckpt_path=best or None,
                verbose=False,
                weights_only=True,
            )
            print_metrics_table(writer.metrics)
            metrics.update(writer.metrics)
    # marked `finished` on leaving the session: the resumable state is no longer needed
    release_resume_state(trainer)
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
    directory (:func:`osteolightning.runs.sweep.record_failed_job`), and the job returns
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
        lifecycle.finish_wandb(exit_code=1)  # a no-op unless a failure left a W&B run open


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric for sweepers. A framework error ends it
    with its message and exit status 1 (:func:`~osteolightning.runs.failures.user_errors`);
    ``reproduce=<run>`` re-runs a finished run from its saved config and compares metrics."""
    with user_errors("osteo-train", cfg.paths.output_dir):
        if cfg.get("reproduce"):
            return reproduce_run(cfg, run_job)
        return run_job(cfg)


if __name__ == "__main__":
    main()
