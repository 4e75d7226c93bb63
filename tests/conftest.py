"""Shared fixtures: real Hydra composition, outputs in tmp_path, one cached tiny phantom."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from osteolightning.runs import lifecycle
from osteolightning.utils.config import compose_config

SHARED_DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _no_heartbeat_outlives_its_test():
    """A run started by a test (``lifecycle.start_run``) beats in a thread until it finishes; a
    test that leaves it running must not have it write into the next test's files."""
    yield
    lifecycle.stop_heartbeat()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per test session: the tiny phantom is generated once."""
    return tmp_path_factory.mktemp("osteo-cache")


@pytest.fixture
def make_cfg(tmp_path: Path, cache_dir: Path):
    """``make_cfg("train", ["debug=tiny"], run="a")`` → a composed config for one run."""

    def _make(config_name: str, overrides: Sequence[str] = (), run: str = "run") -> DictConfig:
        return compose_config(config_name, overrides, tmp_path / run, cache_dir)

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def knee_checkpoint(tmp_path_factory, cache_dir: Path) -> Path:
    """A tiny ResNet-10-T classifier trained on the phantom at 64 px (a knee-trained backbone)."""
    from osteolightning.train import train

    run = tmp_path_factory.mktemp("knee_net") / "run"
    cfg = compose_config("train", ["debug=tiny", "norm.mean=[0.4]"], run, cache_dir)
    train(cfg)
    GlobalHydra.instance().clear()
    return next((run / "checkpoints").glob("epoch_*.ckpt"))


@pytest.fixture(scope="session")
def phantom_dir(cache_dir: Path) -> Path:
    """The tiny phantom (as data=tiny generates it), for tests that need image files."""
    from osteolightning.data.phantom_files import ensure_phantom

    return ensure_phantom(cache_dir / "phantom" / "n60-s0-96px-8bit", n=60, seed=0, size=96).parent


@pytest.fixture
def class_tree(tmp_path: Path, phantom_dir: Path) -> Path:
    """A class-folder tree (ROOT/<class>/*.png) copied from the tiny phantom."""
    import csv

    root = tmp_path / "tree"
    with open(phantom_dir / "manifest.csv") as handle:
        for row in csv.DictReader(handle):
            dest = root / row["label"]
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(phantom_dir / row["image"], dest / Path(row["image"]).name)
    return root


def _fit_once(
    factory: pytest.TempPathFactory, cache_dir: Path, config: str, debug: str, *extra: str
):
    """One tiny fit + test of ``config`` with ``debug=<debug>``: (run_dir, metrics, objects)."""
    from osteolightning.train import train

    run_dir = factory.mktemp(config) / "run"
    # the tests read both checkpoints of the finished run: the best weights and the full,
    # resumable state (removed once a run finishes unless kept)
    overrides = [f"debug={debug}", "callbacks.last_checkpoint.keep_after_finish=true", *extra]
    metrics, objects = train(compose_config(config, overrides, run_dir, cache_dir))
    GlobalHydra.instance().clear()
    return run_dir, metrics, objects


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """One tiny fit + test (``osteo-train debug=tiny``) shared by the tests that need a run."""
    return _fit_once(tmp_path_factory, cache_dir, "train", "tiny")


@pytest.fixture(scope="session")
def segmented(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """One tiny segmentation fit + test (``osteo-segment debug=seg_tiny``), trained for 20
    epochs: the 2 of ``debug=seg_tiny`` leave the tiny network predicting background only, and
    the tests that use its masks (export, the classifier's mask input) need bone in them."""
    return _fit_once(tmp_path_factory, cache_dir, "segment", "seg_tiny", "trainer.max_epochs=20")
