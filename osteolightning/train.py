"""``osteo-train``: compose the config, instantiate data, model, trainer; fit, then test.

Example:
    osteo-train                                     # EfficientNet-Lite0 on the knee phantom
    osteo-train data=folder data.root=/data/knees trainer=gpu
    osteo-train -m model.net.name=resnet18,densenet121 seed=0,1,2
    osteo-train resume=auto                         # continue the killed run of this config
"""

from __future__ import annotations

from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from osteolightning.callbacks import RunArtifacts
from osteolightning.callbacks.evaluation import fit_validation_temperature
from osteolightning.callbacks.writers import build_writer
from osteolightning.utils import runs
from osteolightning.utils.config import CONFIG_DIR, instantiate_list, to_container
from osteolightning.utils.logging import get_logger
from osteolightning.utils.run import close_loggers, print_metrics_table

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
            if writer.temperature_scaling:  # Guo et al. 2017, fitted on the validation split
                writer.temperature = fit_validation_temperature(
                    trainer, model, datamodule, best or None
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
        runs.finish_run(run_dir)
    finally:
        close_loggers(loggers)
    return metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}


def run_job(cfg: DictConfig) -> float | None:
    """One job of ``osteo-train`` / ``osteo-segment``: train, return the optimised metric."""
    metrics, _ = train(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric for sweepers."""
    return run_job(cfg)


if __name__ == "__main__":
    main()
