"""``debug=seg_tiny`` is a run of seconds: its trainer's epochs are the tiny trainer's, not the
20 that osteolightning/conf/segment.yaml sets for real segmentation runs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from osteolightning.utils.config import CONFIG_DIR


def test_seg_tiny_keeps_the_tiny_trainer_s_epochs(make_cfg):
    tiny = OmegaConf.load(Path(CONFIG_DIR) / "trainer" / "tiny.yaml")
    assert make_cfg("segment", ["debug=seg_tiny"]).trainer.max_epochs == tiny.max_epochs
    assert make_cfg("train", ["debug=tiny"], run="t").trainer.max_epochs == tiny.max_epochs
    assert make_cfg("segment", run="full").trainer.max_epochs == 20  # real runs keep theirs
