"""``osteo-eval``: evaluate a checkpoint on any data source; writes metrics.json, predictions.csv.

Example:
    osteo-eval ckpt_path=logs/train/runs/2026-11-23_10-00-00/checkpoints/best.ckpt \\
        data=folder data.root=/data/knees
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, open_dict

from osteolightning.callbacks import RunArtifacts
from osteolightning.callbacks.writers import build_writer
from osteolightning.errors import ConfigError
from osteolightning.models.checkpointing import RUN_CONFIG_KEY
from osteolightning.utils import runs
from osteolightning.utils.config import CONFIG_DIR, instantiate_list, to_container
from osteolightning.utils.logging import get_logger
from osteolightning.utils.run import close_loggers, print_metrics_table

log = get_logger(__name__)

#: Facts the checkpoint fixes; the data must be prepared the way the network was trained.
CHECKPOINT_FACTS = ("class_names", "image_size", "in_chans", "mean", "std")


def load_checkpoint(
    ckpt_path: str | Path, allow_unsafe_pickle: bool = False
) -> tuple[L.LightningModule, dict[str, Any]]:
    """Rebuild a trained model (classifier or segmenter) from its checkpoint alone
    (``weights_only`` loading): the run config stored in the checkpoint names the module.

    Returns:
        ``(model, run_config)``: the model with its trained weights, and the resolved config of
        the run that wrote the checkpoint (its ``evaluation`` names the report writer).

    Raises:
        ConfigError: a missing file, a checkpoint not written by ``osteo-train`` /
            ``osteo-segment``, or one that needs arbitrary unpickling while
            ``allow_unsafe_pickle`` is false.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(
            f"Checkpoint '{path}' does not exist. Pass ckpt_path=<run>/checkpoints/<name>.ckpt."
        )
    checkpoint = runs.torch_load(path, allow_unsafe_pickle)
    run_cfg = checkpoint.get(RUN_CONFIG_KEY)
    if not run_cfg or "model" not in run_cfg:
        raise ConfigError(
            f"'{path}' holds no osteolightning run config; was it written by osteo-train?"
        )
    net_cfg = dict(run_cfg["model"]["net"])
    if "pretrained" in net_cfg:
        net_cfg["pretrained"] = False  # the checkpoint's weights replace any initialisation
    model_cfg = {
        k: v for k, v in run_cfg["model"].items() if k not in ("net", "optimizer", "scheduler")
    }
    model = hydra.utils.instantiate(model_cfg, net=hydra.utils.instantiate(net_cfg))
    model.load_state_dict(checkpoint["state_dict"])
    return model, run_cfg


def load_model(ckpt_path: str | Path, allow_unsafe_pickle: bool = False) -> L.LightningModule:
    """The trained model of a checkpoint (see :func:`load_checkpoint`)."""
    return load_checkpoint(ckpt_path, allow_unsafe_pickle)[0]


#: the name this module has always exported
load_classifier = load_model


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test ``cfg.ckpt_path`` on ``cfg.data`` (every image in the test split)."""
    run_dir = runs.start_run(cfg)
    model, run_cfg = load_checkpoint(cfg.ckpt_path, cfg.get("allow_unsafe_pickle", False))
    with open_dict(cfg):
        for key in CHECKPOINT_FACTS:
            trained = model.hparams[key]
            if key in cfg.data and list(map(str, [cfg.data[key]])) != list(map(str, [trained])):
                log.info(f"Using the checkpoint's {key}={trained} (config had {cfg.data[key]}).")
            cfg.data[key] = trained
        if "mask_classes" in cfg.data:  # a segmentation data config names its mask classes too
            cfg.data.mask_classes = model.hparams.class_names
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    evaluation = dict(cfg.evaluation)
    trained_writer = (run_cfg.get("evaluation") or {}).get("_target_")
    if trained_writer and "_target_" not in evaluation:
        # a segmentation checkpoint reports with the writer it was trained with
        evaluation = {
            "_target_": trained_writer,
            "n_resamples": evaluation.get("n_resamples"),
            "seed": evaluation.get("seed"),
        }
    writer = build_writer(evaluation, cfg.paths.output_dir, ckpt_path=str(cfg.ckpt_path))
    callbacks = [
        *instantiate_list(cfg.get("callbacks"), "callbacks"),
        RunArtifacts(cfg.paths.output_dir, to_container(cfg)),
        writer,
    ]
    if writer.temperature_scaling:
        log.warning(
            "evaluation.temperature_scaling is ignored by osteo-eval (no validation "
            "split): set evaluation.temperature or let it come from the run's metrics.json."
        )
    loggers = instantiate_list(cfg.get("logger"), "logger")
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    for logger in loggers:
        logger.log_hyperparams(to_container(cfg))
    try:
        trainer.test(model, datamodule=datamodule, verbose=False)
        print_metrics_table(writer.metrics)
        runs.finish_run(run_dir)
    finally:
        runs.stop_heartbeat()  # a failed run stays `running`, resumable at once
        close_loggers(loggers)
    return writer.metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: one checkpoint, or ensemble mode (``ckpt_path=[A,B,...]``,
    ``ensemble=<method>``; see :mod:`osteolightning.ensemble.evaluate`)."""
    from osteolightning.ensemble.evaluate import evaluate_ensemble, is_ensemble

    if is_ensemble(cfg):
        evaluate_ensemble(cfg)
    else:
        evaluate(cfg)


if __name__ == "__main__":
    main()
