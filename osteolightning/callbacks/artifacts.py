"""Everything a run needs to be reproduced and audited, saved beside its results."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from osteolightning.runs import rundir
from osteolightning.utils.files import atomic_write_csv, atomic_write_json

PACKAGES = (
    "osteolightning",
    "torch",
    "torchvision",
    "lightning",
    "timm",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "albumentations",
    "monai",
    "numpy",
    "scikit-learn",
    "pillow",
    "pydicom",
    "wandb",
)


def environment_versions() -> dict[str, Any]:
    """Python, platform, package versions and, run from a checkout, its git commit."""
    versions: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        # the checkout this package runs from; an installed copy (site-packages) has none, and
        # the repository around its environment (a project's .venv) is not the code's commit
        repo = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        top, _, head = commit.stdout.strip().partition("\n")
        if commit.returncode != 0 or Path(top).resolve() != repo:
            return versions
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        versions["git_commit"] = head.strip()
        versions["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        versions["git_commit"] = None
    return versions


class RunArtifacts(L.Callback):
    """Writes ``splits.csv`` and ``versions.json`` into the run directory, and stores the fully
    resolved config inside every checkpoint (so ``osteo-eval`` can rebuild the network).

    Args:
        output_dir: the run directory.
        config: the resolved run config as plain containers.
    """

    def __init__(self, output_dir: str | Path, config: dict[str, Any] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.config = config or {}

    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "split_rows"):
            rundir.write_splits(self.output_dir, datamodule.split_rows())
            # What was left out, and why: never silent.
            atomic_write_csv(
                self.output_dir / rundir.SKIPPED, ["path", "reason"], datamodule.skipped
            )
            atomic_write_csv(
                self.output_dir / rundir.LABEL_CONFLICTS,
                ["group", "path", "label", "action"],
                datamodule.conflicts,
            )
        atomic_write_json(self.output_dir / rundir.VERSIONS, environment_versions())

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # the module writes it into each checkpoint (weights-only ones too; see StoresRunConfig)
        pl_module.run_config = self.config
