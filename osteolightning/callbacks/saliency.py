"""The saliency report of a classifier's test: the shortcut check and a grid of overlays.

After the test, :class:`SaliencyWriter` computes a class-activation map (Grad-CAM or
Grad-CAM++, :mod:`osteolightning.models.saliency`) of each test image for its predicted class,
then writes

* ``saliency.csv``: per image, the share of saliency in the border band and inside the bone
  (where masks are known) and those regions' share of the pixels;
* into ``metrics.json``: the overall shares with bootstrap intervals and the shortcut flag
  (:func:`osteolightning.metrics.saliency.shortcut_report`), logged as a warning when raised;
* ``figures/saliency_grid.png``: per true class, correct and wrong test cases with their maps
  (also to W&B).

Bone masks come from the data source (the phantom's masks, a manifest's ``mask`` column, e.g.
the manifest ``osteo-predict`` writes with a segmentation checkpoint). It runs on rank 0 after
the report writer, which it follows in the callback list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from osteolightning.data.masks import image_shape, letterbox_mask, read_foreground
from osteolightning.errors import ConfigError
from osteolightning.metrics.saliency import (
    border_band,
    check_top_fraction,
    saliency_shares,
    shortcut_report,
    top_saliency,
)
from osteolightning.metrics.saliency_figures import heat_overlay, write_saliency_grid
from osteolightning.models.saliency import SaliencyExplainer, check_method
from osteolightning.runs import rundir
from osteolightning.utils.files import atomic_write_csv, atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

COLUMNS = [
    "path",
    "label",
    "prediction",
    "border_share",
    "bone_share",
    "border_area",
    "bone_area",
]


class SaliencyWriter(L.Callback):
    """Saliency maps of the test images, the shortcut check and the overlay grid.

    Args:
        output_dir: the run directory.
        cam_layer: the backbone's target layer (``backbone.cam_layer`` of the model's run).
        method: ``gradcam`` or ``gradcampp``.
        max_images: test images checked (the first ones in sample order); ``None``: all.
        border_fraction: width of the border band, as a fraction of the image's shorter side.
        top_fraction: the share of each map's most salient pixels the shares are taken over.
        max_border_share: flag the model when the mean border share is above it.
        grid_per_cell: overlays per (class, correct / wrong) cell of the grid.
        batch_size: images per backward pass.
        n_resamples: bootstrap resamples for the intervals.
        seed: bootstrap seed.
    """

    def __init__(
        self,
        output_dir: str | Path,
        cam_layer: str | None,
        method: str = "gradcam",
        max_images: int | None = 200,
        border_fraction: float = 0.1,
        top_fraction: float = 0.1,
        max_border_share: float = 0.5,
        grid_per_cell: int = 2,
        batch_size: int = 16,
        n_resamples: int = 1000,
        seed: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.cam_layer, self.method = cam_layer, check_method(method)
        self.max_images = None if max_images is None else int(max_images)
        self.border_fraction, self.max_border_share = border_fraction, max_border_share
        self.grid_per_cell, self.batch_size = int(grid_per_cell), int(batch_size)
        self.n_resamples, self.seed = int(n_resamples), int(seed)
        self.top_fraction = check_top_fraction(top_fraction)
        border_band((8, 8), border_fraction)  # a bad fraction fails now, not after the test
        self._active = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the target layer before any training: a classifier without one (or with a
        layer its network lacks, e.g. ``model.net.name`` changed without ``model/backbone``)
        gets no saliency report, with a warning naming the option. Models the report does not
        apply to get none without a warning: no image network (the covariates alone, silent),
        or image features computed outside a differentiable network (``model=texture``,
        ``bone_density``, ``linear_probe``: a line at INFO says so); a segmenter has no
        class probabilities to explain."""
        net = getattr(pl_module, "net", None)
        self._active = net is not None and hasattr(pl_module, "predict_proba")
        # a model without an image network (the covariates alone): nothing to explain, no word
        self._active = self._active and getattr(net, "image_dim", None) != 0
        if not self._active:
            return
        embedder = getattr(net, "embedder", None)
        if embedder is not None:  # a fitted head on features: texture, bone statistics, a probe
            log.info(
                f"No saliency report: this model's image features come from "
                f"{type(embedder).__name__}, computed without gradients (hand-made statistics, "
                "or a frozen network whose features are cached), so Grad-CAM has no layer of "
                "it to follow."
            )
            self._active = False
            return
        try:
            SaliencyExplainer.check_layer(net, self.cam_layer)
        except ConfigError as err:
            log.warning(f"No saliency report (saliency.enabled=false silences this): {err}")
            self._active = False

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        dataset = getattr(datamodule, "datasets", {}).get("test")
        if not self._active or trainer.global_rank != 0 or dataset is None or not len(dataset):
            return
        explainer = SaliencyExplainer(pl_module.net, self.cam_layer, self.method)
        explainer.to(pl_module.device)
        n = len(dataset) if self.max_images is None else min(len(dataset), self.max_images)
        if n < len(dataset):
            log.info(f"Saliency: the first {n} of {len(dataset)} test images (max_images).")
        samples = datamodule.samples
        reported = self._reported_predictions(samples, np.asarray(dataset.indices[:n]))
        maps, explained = [], []
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            batch = torch.stack([dataset[i]["image"] for i in range(start, stop)])
            classes = None if reported is None else torch.as_tensor(reported[start:stop])
            m, c = explainer(batch, classes)
            maps.append(m.numpy())
            explained.append(c.numpy())
        self._write(trainer, pl_module, dataset, np.concatenate(maps), np.concatenate(explained))

    def _regions(
        self, samples: list[Any], indices: np.ndarray, size: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(border (n, S, S), bone (n, S, S) or None)`` in the letterboxed network frame."""
        borders, bones = [], []
        for i in indices:
            sample = samples[int(i)]
            shape = image_shape(sample.path)
            borders.append(letterbox_mask(border_band(shape, self.border_fraction), size))
            if sample.mask is not None:
                bones.append(letterbox_mask(read_foreground(sample.mask), size))
        known = len(bones) == len(borders)
        if bones and not known:
            log.info("Saliency: some test images have no mask; the bone share is left out.")
        return np.stack(borders), (np.stack(bones) if known else None)

    def _write(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        dataset: Any,
        maps: np.ndarray,
        explained: np.ndarray,
    ) -> None:
        n, size = len(maps), maps.shape[-1]
        names = list(pl_module.hparams.class_names)
        indices = np.asarray(dataset.indices[:n])
        labels = np.asarray(dataset.labels[:n])
        samples = trainer.datamodule.samples
        preds = explained  # the class each map explains: the reported prediction
        border, bone = self._regions(samples, indices, size)
        peaks = top_saliency(maps, self.top_fraction)
        border_share = saliency_shares(peaks, border)
        bone_share = saliency_shares(peaks, bone) if bone is not None else None
        border_area, bone_area = border.mean(axis=(1, 2)), None
        if bone is not None:
            bone_area = bone.mean(axis=(1, 2))
        report = shortcut_report(
            border_share,
            border_area,
            bone_share,
            bone_area,
            self.max_border_share,
            self.n_resamples,
            self.seed,
        )
        report.update(
            {
                "saliency/method": self.method,
                "saliency/cam_layer": self.cam_layer,
                "saliency/border_fraction": float(self.border_fraction),
                "saliency/top_fraction": self.top_fraction,
                "saliency/max_border_share": float(self.max_border_share),
            }
        )
        rows = [
            [
                str(samples[int(i)].path),
                names[int(y)] if y >= 0 else "",
                names[int(p)],
                *(None if v is None or not np.isfinite(v) else round(float(v), 6) for v in vals),
            ]
            for i, y, p, *vals in zip(
                indices,
                labels,
                preds,
                border_share,
                bone_share if bone_share is not None else [None] * n,
                border_area,
                bone_area if bone_area is not None else [None] * n,
                strict=True,
            )
        ]
        atomic_write_csv(self.output_dir / rundir.SALIENCY, COLUMNS, rows)
        metrics = rundir.read_metrics(self.output_dir)
        atomic_write_json(self.output_dir / rundir.METRICS, {**metrics, **report})
        self._warn(report)
        images = np.asarray(dataset.images[:n])
        grid = self._grid(images, maps, labels, preds, names, border_share)
        self._log_wandb(trainer, report, grid)

    def _reported_predictions(self, samples: list[Any], indices: np.ndarray) -> np.ndarray | None:
        """The class each image was reported as (``predictions.csv``: TTA included), which its
        map explains; ``None`` when the report does not list every image (the maps then
        explain the plain forward's argmax)."""
        path = self.output_dir / rundir.PREDICTIONS
        if not path.is_file():
            return None
        rows = rundir.read_predictions(path).rows
        probs = [rows.get(str(samples[int(i)].path)) for i in indices]
        if any(p is None for p in probs):
            return None
        return np.array([int(np.argmax(p[1])) for p in probs], dtype=np.int64)

    def _warn(self, report: dict[str, Any]) -> None:
        share, area = report["test/saliency_border_share"], report["test/saliency_border_area"]
        bone = report["test/saliency_bone_share"]
        where = "" if bone is None else f"; {bone:.0%} lies inside the bone"
        if report["test/saliency_shortcut_warning"]:
            log.warning(
                f"Shortcut check: {share:.0%} of the saliency lies in the image's border band "
                f"(which holds {area:.0%} of the pixels){where}, above "
                f"saliency.max_border_share={self.max_border_share}. The model may read side "
                "markers, collimation or scanner borders instead of the bone; see "
                f"{rundir.FIGURES}/{rundir.SALIENCY_GRID}."
            )
        elif share is not None:
            log.info(
                f"Shortcut check: {share:.0%} of the saliency in the border band "
                f"({area:.0%} of the pixels){where}."
            )

    def _grid(
        self,
        images: np.ndarray,
        maps: np.ndarray,
        labels: np.ndarray,
        preds: np.ndarray,
        names: list[str],
        border_share: np.ndarray,
    ) -> Path | None:
        """Per true class: ``grid_per_cell`` correct, then ``grid_per_cell`` wrong overlays."""
        k = self.grid_per_cell
        if k <= 0:
            return None
        cells: dict[str, list[tuple[np.ndarray, str]]] = {}
        for c, name in enumerate(names):
            row: list[tuple[np.ndarray, str]] = []
            for correct in (True, False):
                chosen = np.flatnonzero((labels == c) & ((preds == c) == correct))[:k]
                for i in chosen:
                    caption = f"pred {names[int(preds[i])]}, border {border_share[i]:.0%}"
                    row.append((heat_overlay(images[i], maps[i]), caption))
                row += [(np.full((*images.shape[1:], 3), 255, np.uint8), "")] * (k - len(chosen))
            cells[f"true {name}"] = row
        columns = [*(["correct"] * k), *(["wrong"] * k)]
        title = f"{self.method} at {self.cam_layer}: test images by true class"
        return write_saliency_grid(
            cells, columns, self.output_dir / rundir.FIGURES / rundir.SALIENCY_GRID, title
        )

    @staticmethod
    def _log_wandb(trainer: L.Trainer, report: dict[str, Any], grid: Path | None) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ != "WandbLogger":
                continue
            try:
                import wandb

                values = {k: v for k, v in report.items() if isinstance(v, int | float)}
                if grid is not None:
                    values["test/figures/saliency_grid"] = wandb.Image(str(grid))
                logger.experiment.log(values)
            except Exception as err:  # noqa: BLE001 - any W&B failure (network, disk, API)
                log.warning(f"Could not log the saliency report to W&B ({err!r}).")
