"""Every option of every config group composes and instantiates (real Hydra composition)."""

from pathlib import Path

import hydra
import pytest

from osteolightning.utils.config import CONFIG_DIR

CONF = Path(CONFIG_DIR)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


GROUPS = ["common", "data", "model", "trainer", "callbacks", "logger", "debug", "experiment"]


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_for_training(make_cfg, group, option):
    overrides = [f"{group}={option}"]
    if option in ("folder", "manifest"):
        overrides.append("data.root=/some/where")
    cfg = make_cfg("train", overrides)
    assert cfg.class_names == ["normal", "osteopenia", "osteoporosis"]
    assert cfg.model.net.num_classes == len(cfg.class_names)
    if group == "trainer" and option not in ("gpu", "ddp"):
        hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    if group in ("callbacks", "logger"):
        from osteolightning.utils.config import instantiate_list

        assert instantiate_list(cfg[group], group) or option == "eval"


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_instantiates_and_runs(make_cfg, option):
    import torch

    cfg = make_cfg("train", [f"model={option}", "common=tiny"])
    model = hydra.utils.instantiate(cfg.model)
    out = model(torch.zeros(2, cfg.in_chans, cfg.image_size, cfg.image_size))
    assert out.shape == (2, 3)


def test_eval_config_requires_a_checkpoint(make_cfg):
    from omegaconf.errors import MissingMandatoryValue

    cfg = make_cfg("eval")
    assert cfg.data.evaluate_all is True
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.ckpt_path
