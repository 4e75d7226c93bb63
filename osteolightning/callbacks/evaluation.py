"""Collects test predictions on every rank and writes ``predictions.csv`` and ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist

from osteolightning.metrics.report import evaluation_report
from osteolightning.utils.files import atomic_write_csv, atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


class EvaluationWriter(L.Callback):
    """Gathers ``(index, label, probs)`` of every test image across ranks, then on rank 0 writes
    one row per image to ``predictions.csv`` and the bootstrap report to ``metrics.json``.

    Args:
        output_dir: the run directory.
        n_resamples: bootstrap resamples for the 95 % intervals.
        seed: bootstrap seed.
        ckpt_path: the evaluated checkpoint, recorded when the trainer was given a model object.
    """

    def __init__(
        self,
        output_dir: str | Path,
        n_resamples: int = 1000,
        seed: int = 0,
        ckpt_path: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.ckpt_path = ckpt_path
        self.n_resamples, self.seed = n_resamples, seed
        self._rows: list[tuple[int, int, np.ndarray]] = []

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics written by the last test run (read from ``metrics.json``, so the values
        are there in the launching process also when the test ran in spawned DDP workers)."""
        path = self.output_dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

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

    def _gather(self, trainer: L.Trainer) -> list[tuple[int, int, np.ndarray]]:
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            buckets: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(buckets, self._rows)
            rows = [row for bucket in buckets for row in bucket]
        else:
            rows = self._rows
        # Keyed by sample index: a padded duplicate (if any sampler padded) counts once.
        return sorted({row[0]: row for row in rows}.values(), key=lambda r: r[0])

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self._gather(trainer)
        if trainer.global_rank != 0 or not rows:
            return
        class_names = pl_module.hparams.class_names
        samples = trainer.datamodule.samples
        labels = np.array([r[1] for r in rows])
        probs = np.stack([r[2] for r in rows])
        header = ["path", "label", *[f"prob_{c}" for c in class_names], "prediction"]
        atomic_write_csv(
            self.output_dir / "predictions.csv",
            header,
            [
                [
                    str(samples[i].path),
                    class_names[y],
                    *[f"{v:.6f}" for v in p],
                    class_names[int(p.argmax())],
                ]
                for i, y, p in rows
            ],
        )
        report = evaluation_report(
            labels, probs, class_names, prefix="test/", n_resamples=self.n_resamples, seed=self.seed
        )
        extra = {k: float(v) for k, v in trainer.callback_metrics.items() if k == "test/loss"}
        best = trainer.checkpoint_callback
        if best is not None and best.monitor and best.best_model_score is not None:
            extra[f"{best.monitor}_best"] = float(best.best_model_score)  # the tested checkpoint's
        ckpt = getattr(trainer, "ckpt_path", None)
        atomic_write_json(
            self.output_dir / "metrics.json",
            {
                **report,
                **extra,
                "ckpt_path": str(ckpt) if ckpt else self.ckpt_path,
                "world_size": trainer.world_size,
            },
        )
        log.info(f"Wrote {len(rows)} predictions and metrics to {self.output_dir}")
