"""Runs never write into another run's directory; checkpoints load with weights_only."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from osteolightning.errors import ConfigError
from osteolightning.models.checkpointing import load_model as load_classifier
from osteolightning.models.components.backbone import create_backbone
from osteolightning.runs import lifecycle
from osteolightning.train import train


class Custom:
    """Any class outside torch's weights_only allow-list."""

    def __init__(self) -> None:
        self.note = "pickled"


def test_train_refuses_a_directory_holding_another_runs_results(make_cfg) -> None:
    cfg = make_cfg("train", ["debug=tiny"], run="taken")
    metrics = Path(cfg.paths.output_dir) / "metrics.json"
    metrics.write_bytes(b'{"test/acc": 0.93}\n')
    with pytest.raises(ConfigError, match=r"taken.*resume="):
        train(cfg)
    assert metrics.read_bytes() == b'{"test/acc": 0.93}\n'
    assert sorted(p.name for p in metrics.parent.iterdir()) == ["metrics.json"]


def test_resume_refuses_a_finished_run_and_a_directory_without_marker(make_cfg) -> None:
    cfg = make_cfg("train", ["debug=tiny"], run="done")
    lifecycle.start_run(cfg)
    lifecycle.finish_run(cfg.paths.output_dir)
    flat = lifecycle.hashed_config(cfg)
    with pytest.raises(ConfigError, match="finished"):
        lifecycle.check_resumable(Path(cfg.paths.output_dir), flat)
    with pytest.raises(ConfigError, match="no .osteo_run.json"):
        lifecycle.check_resumable(Path(cfg.paths.output_dir).parent, flat)


def test_pickled_module_weights_need_allow_unsafe_pickle(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(timm.create_model("resnet10t", num_classes=3, in_chans=1), path)
    with pytest.raises(ConfigError, match="allow_unsafe_pickle"):
        create_backbone("resnet10t", num_classes=3, pretrained=str(path))
    net = create_backbone(
        "resnet10t", num_classes=3, pretrained=str(path), allow_unsafe_pickle=True
    )
    assert net.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


def test_eval_loads_checkpoints_weights_only(trained, tmp_path: Path) -> None:
    run_dir, _, _ = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["extra"] = Custom()
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(checkpoint, unsafe)
    with pytest.raises(ConfigError, match="allow_unsafe_pickle=true"):
        load_classifier(unsafe)
    assert load_classifier(unsafe, allow_unsafe_pickle=True).hparams.class_names


def test_train_resumes_from_ckpt_path_weights_only(trained, make_cfg, tmp_path: Path) -> None:
    checkpoint = torch.load(trained[0] / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["extra"] = Custom()
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(checkpoint, unsafe)
    cfg = make_cfg("train", ["debug=tiny", f"ckpt_path={unsafe}"], run="from-unsafe")
    with pytest.raises(ConfigError, match="allow_unsafe_pickle=true"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_hydra_run_dir_of_another_run_is_refused_before_hydra_writes(tmp_path):
    """`hydra.run.dir=<existing run>`: neither its results nor its .hydra files are touched."""
    import subprocess
    import sys

    victim = tmp_path / "victim"
    (victim / ".hydra").mkdir(parents=True)
    (victim / "metrics.json").write_text('{"test/acc": 0.9}')
    (victim / ".hydra" / "config.yaml").write_text("original: true\n")
    result = subprocess.run(
        [sys.executable, "-m", "osteolightning.train", "debug=tiny", f"hydra.run.dir={victim}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "already holds results" in result.stderr
    assert (victim / ".hydra" / "config.yaml").read_text() == "original: true\n"
    assert (victim / "metrics.json").read_text() == '{"test/acc": 0.9}'
    assert sorted(p.name for p in victim.rglob("*")) == [".hydra", "config.yaml", "metrics.json"]
