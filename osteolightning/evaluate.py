"""``osteo-eval``: evaluate a checkpoint on any data source; writes metrics.json, predictions.csv.

Example:
    osteo-eval ckpt_path=logs/train/runs/2026-11-23_10-00-00/checkpoints/best.ckpt \\
        data=folder data.root=/data/knees
    osteo-eval ckpt_path=[A.ckpt,B.ckpt,C.ckpt] ensemble=fuzzy_rank data=folder data.root=DIR
"""

from __future__ import annotations

from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, open_dict

from osteolightning.callbacks import RunArtifacts
from osteolightning.callbacks.writers import build_saliency, build_writer
from osteolightning.ensemble.evaluate import evaluate_ensemble, is_ensemble
from osteolightning.errors import ConfigError
from osteolightning.models.checkpointing import load_checkpoint
from osteolightning.models.saliency import cam_layer_of
from osteolightning.runs import lifecycle, rundir
from osteolightning.runs.checks import check_config
from osteolightning.runs.failures import user_errors
from osteolightning.utils.config import CONFIG_DIR, instantiate_list, to_container
from osteolightning.utils.console import print_metrics_table
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def prepare_like_checkpoint(data_cfg: DictConfig, model: L.LightningModule) -> None:
    """Set the data config's preprocessing (classes, input size, channels, normalisation) to
    the checkpoint's: the data must be prepared the way the network was trained."""
    with open_dict(data_cfg):
        for key, trained in model.preprocessing.hparams().items():
            given = data_cfg.get(key)
            if key in data_cfg and list(map(str, [given])) != list(map(str, [trained])):
                log.info(f"Using the checkpoint's {key}={trained} (config had {given}).")
            data_cfg[key] = trained
        if "mask_classes" in data_cfg:  # a segmentation data config names its mask classes
            data_cfg.mask_classes = list(model.preprocessing.class_names)
        # the columns the model reads: its regression target, covariates and their coding
        for key in ("target", "covariates", "covariate_coding"):
            if key in data_cfg and key in model.hparams:
                data_cfg[key] = model.hparams[key]


def check_task(ckpt_path: Any, model: L.LightningModule, data_cfg: DictConfig) -> None:
    """Raise when the checkpoint's task (classification, segmentation) is not the data's.

    Raises:
        ConfigError: a segmentation checkpoint with classification data, or the reverse.
    """
    segmenter = callable(getattr(model, "predict_masks", None))
    masks = "mask_classes" in data_cfg
    if segmenter and not masks:
        raise ConfigError(
            f"'{ckpt_path}' is a segmentation checkpoint (osteo-segment), but the data config is "
            "for classification. Evaluate it on masks: data=seg_folder data.root=DIR "
            "(DIR/images + DIR/masks) or data=seg_manifest data.root=CSV."
        )
    if masks and not segmenter:
        raise ConfigError(
            f"'{ckpt_path}' is a classification checkpoint (osteo-train), but the data config is "
            "for segmentation. Evaluate it on labelled images: data=folder data.root=DIR or "
            "data=manifest data.root=CSV."
        )


#: osteo-eval warns when more than this share of the evaluated images trained the checkpoint
SEEN_WARNING = 0.5


def warn_if_seen(ckpt_path: Any, datamodule: Any) -> float | None:
    """Warn when most evaluated images were in the checkpoint's training split (by content: the
    digests of the DataModule's :class:`~osteolightning.data.plan.DataPlan` against the SHA-1 in
    its run's ``splits.csv``), so the metrics are not a held-out estimate.

    Returns:
        The share of evaluated images that were training images, or ``None`` when the run has
        no ``splits.csv``.
    """
    splits = rundir.find_splits(rundir.run_of_checkpoint(ckpt_path))
    plan = getattr(datamodule, "plan", None)  # the data plan the evaluation runs on
    if splits is None or plan is None or not plan.digests:
        return None
    _, rows = rundir.read_splits(splits)
    trained = {row.get("sha1") for row in rows if row.get("split") == "train"}
    seen = sum(d in trained for d in plan.digests)
    share = seen / len(plan.digests)
    if share > SEEN_WARNING:
        log.warning(
            f"{seen} of the {len(plan.digests)} evaluated images ({share:.0%}) were in the "
            f"training split of the checkpoint's run ({splits}): these metrics are not a "
            "held-out estimate. Evaluate on images the model has not seen."
        )
    return share


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test ``cfg.ckpt_path`` on ``cfg.data`` (every image in the test split)."""
    check_config(cfg)
    with lifecycle.session(cfg) as run:
        model, run_cfg = load_checkpoint(cfg.ckpt_path, cfg.get("allow_unsafe_pickle", False))
        check_task(cfg.ckpt_path, model, cfg.data)
        prepare_like_checkpoint(cfg.data, model)
        datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
        datamodule.setup("test")
        warn_if_seen(cfg.ckpt_path, datamodule)
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
            writer,  # the saliency report follows: it adds to the writer's metrics.json
            # the checkpoint's target layer (its run config), unless this command sets one
            *build_saliency(
                cfg.get("saliency"),
                cam_layer_of(cfg) or cam_layer_of(run_cfg),
                cfg.paths.output_dir,
            ),
        ]
        trainer: L.Trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=callbacks, logger=run.loggers
        )
        trainer.test(model, datamodule=datamodule, verbose=False)
        print_metrics_table(writer.metrics)
    return writer.metrics, {"datamodule": datamodule, "model": model, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: one checkpoint, or ensemble mode (``ckpt_path=[A,B,...]``,
    ``ensemble=<method>``; see :mod:`osteolightning.ensemble.evaluate`)."""
    with user_errors("osteo-eval", cfg.paths.output_dir):
        if is_ensemble(cfg):
            evaluate_ensemble(cfg)
        else:
            evaluate(cfg)


if __name__ == "__main__":
    main()
