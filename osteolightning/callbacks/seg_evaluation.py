"""Collects per-image segmentation scores on every rank, then writes ``predictions.csv`` (one
row per test image), ``metrics.json`` (means with bootstrap intervals), ``csv/test_metrics.csv``,
``test_masks/*.png`` (the predicted label maps), ``figures/overlays.png`` and the W&B report."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from PIL import Image

from osteolightning.callbacks.evaluation import METRIC_COLUMNS, ReportWriter, metric_rows
from osteolightning.metrics.seg_figures import write_overlay_grid
from osteolightning.metrics.segmentation import segmentation_report
from osteolightning.runs import rundir
from osteolightning.utils.files import atomic_write_bytes, atomic_write_csv, atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: test images drawn in ``figures/overlays.png``.
OVERLAY_ROWS = 6


def png_bytes(array: np.ndarray) -> bytes:
    """A ``(H, W)`` uint8 label map (or ``(H, W, 3)`` RGB) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_names(paths: list[str]) -> list[str]:
    """A unique PNG name per image: its stem, or ``<index>_<stem>`` where stems repeat."""
    stems = [Path(p).stem for p in paths]
    repeated = {s for s in stems if stems.count(s) > 1}
    return [f"{i:05d}_{s}.png" if s in repeated else f"{s}.png" for i, s in enumerate(stems)]


class SegmentationEvaluationWriter(ReportWriter):
    """Writes the segmentation test report of a run (``osteo-train`` / ``osteo-segment`` /
    ``osteo-eval`` with a segmentation checkpoint).

    Args:
        output_dir: the run directory.
        n_resamples: bootstrap resamples for the 95 % intervals (images resampled).
        seed: bootstrap seed.
        ckpt_path: the evaluated checkpoint, recorded when the trainer was given a model object.
        save_masks: write each test image's predicted label map to ``test_masks/`` (network
            resolution, the letterboxed ``image_size`` square).
    """

    def __init__(
        self,
        output_dir: str | Path,
        n_resamples: int = 1000,
        seed: int = 0,
        ckpt_path: str | None = None,
        save_masks: bool = True,
        **_: Any,  # classification-only keys of `evaluation` (temperature...) are ignored
    ) -> None:
        self.output_dir = Path(output_dir)
        self.n_resamples, self.seed = int(n_resamples), int(seed)
        self.ckpt_path, self.save_masks = ckpt_path, bool(save_masks)
        self._rows: list[tuple[int, dict[str, np.ndarray]]] = []
        self._names: list[str] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []
        self._names = mask_names([str(s.path) for s in trainer.datamodule.samples])

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        scores = {k: v.float().numpy() for k, v in outputs["scores"].items()}
        preds = outputs["pred"].numpy()
        for j, i in enumerate(outputs["index"].tolist()):
            self._rows.append((i, {k: v[j] for k, v in scores.items()}))
            if self.save_masks:  # every rank writes its own images' masks
                name = self._names[i]
                atomic_write_bytes(self.output_dir / rundir.TEST_MASKS / name, png_bytes(preds[j]))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self._gather(trainer)
        if trainer.global_rank != 0 or not rows:
            return
        class_names = list(pl_module.hparams.class_names)
        names = sorted(rows[0][1])
        scores = {name: np.stack([r[1][name] for r in rows]) for name in names}
        report = segmentation_report(
            scores, class_names, prefix="test/", n_resamples=self.n_resamples, seed=self.seed
        )
        metrics = {**report, **self._run_facts(trainer)}
        self._write_predictions(trainer, rows, scores, class_names)
        atomic_write_json(self.output_dir / rundir.METRICS, metrics)
        log.info(f"Wrote {len(rows)} per-image scores and metrics to {self.output_dir}")
        self._write_metrics_table(trainer, metrics)
        figure = self._write_overlays(trainer, rows)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                try:
                    import wandb

                    table = wandb.Table(columns=METRIC_COLUMNS, data=metric_rows(metrics))
                    payload: dict[str, Any] = {"test/metrics_table": table}
                    if figure is not None:
                        payload["test/figures/overlays"] = wandb.Image(str(figure))
                    logger.experiment.log(payload)
                except Exception as err:  # noqa: BLE001 - any W&B failure (network, disk, API)
                    log.warning(f"Could not log the test report to W&B ({err!r}).")

    def _write_predictions(
        self,
        trainer: L.Trainer,
        rows: list[tuple[int, dict[str, np.ndarray]]],
        scores: dict[str, np.ndarray],
        class_names: list[str],
    ) -> None:
        samples = trainer.datamodule.samples
        fg = range(1, len(class_names))
        header = ["path", "mask"]
        for name in scores:
            header += [f"{name}_{class_names[c]}" for c in fg]
        if self.save_masks:
            header.append("predicted_mask")

        def cell(v: float) -> str:
            return "" if not np.isfinite(v) else f"{v:.6f}"

        table = []
        for n, (i, _) in enumerate(rows):
            sample = samples[i]
            line = [str(sample.path), str(sample.mask or "")]
            for name in scores:
                line += [cell(float(scores[name][n, c])) for c in fg]
            if self.save_masks:
                line.append(f"{rundir.TEST_MASKS}/{self._names[i]}")
            table.append(line)
        atomic_write_csv(self.output_dir / rundir.PREDICTIONS, header, table)

    def _write_overlays(
        self, trainer: L.Trainer, rows: list[tuple[int, dict[str, np.ndarray]]]
    ) -> Path | None:
        """Truth and prediction of the first test images (read back from ``test_masks/``)."""
        if not self.save_masks:
            return None
        dataset = trainer.datamodule.datasets.get("test")
        if dataset is None or getattr(dataset, "masks", None) is None:
            return None
        position = {int(i): n for n, i in enumerate(dataset.indices)}
        picked = [i for i, _ in rows if i in position][:OVERLAY_ROWS]
        images, truths, preds, titles = [], [], [], []
        for i in picked:
            mask_file = self.output_dir / rundir.TEST_MASKS / self._names[i]
            if not mask_file.is_file():
                continue
            images.append(dataset.images[position[i]])
            truths.append(dataset.masks[position[i]])
            preds.append(np.asarray(Image.open(mask_file)))
            titles.append(Path(str(trainer.datamodule.samples[i].path)).name)
        if not images:
            return None
        try:
            return write_overlay_grid(
                images, truths, preds, titles, self.output_dir / rundir.FIGURES / "overlays.png"
            )
        except Exception as err:  # noqa: BLE001 - a figure must never cost the report
            log.warning(f"Could not draw figures/overlays.png ({err!r}).")
            return None
