"""Every option of every config group composes and instantiates (real Hydra composition)."""

from pathlib import Path

import hydra
import pytest

from osteolightning.utils.config import CONFIG_DIR

CONF = Path(CONFIG_DIR)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


GROUPS = ["common", "data", "model", "trainer", "callbacks", "logger", "debug", "experiment"]
#: options that belong to osteo-segment (osteolightning/conf/segment.yaml), not osteo-train
SEG_MODELS = {"unet", "attention_unet", "attention_unet_ds", "unetr", "swin_unetr", "encoder_unet"}
BONES = ["background", "femur", "tibia", "fibula", "patella"]


def _segmentation_option(group: str, option: str) -> bool:
    return (
        (group == "common" and option.startswith("segmentation"))
        or (group == "data" and option.startswith("seg_"))
        or (group == "model" and (option in SEG_MODELS or option == "seg_tiny"))
        or (group == "debug" and option == "seg_tiny")
    )


KL_GRADES = ["KL0", "KL1", "KL2", "KL3", "KL4"]


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(make_cfg, group, option):
    """Classification options under osteo-train's config, segmentation ones under osteo-segment's."""
    overrides = [f"{group}={option}"]
    if option in ("folder", "manifest", "seg_folder", "seg_manifest"):
        overrides.append("data.root=/some/where")
    if _segmentation_option(group, option):
        cfg = make_cfg("segment", overrides)
        assert cfg.class_names == (
            ["background", "bone"] if option in ("seg_folder", "seg_manifest") else BONES
        )
        assert cfg.data.class_names == cfg.class_names
    else:
        cfg = make_cfg("train", overrides)
        # the WHO categories, or the grades of an experiment on graded knees (KL 0-4)
        kl = group == "experiment" and option.startswith("kl_")
        expected = KL_GRADES if kl else ["normal", "osteopenia", "osteoporosis"]
        assert cfg.class_names == expected
    assert cfg.model.net.num_classes == len(cfg.class_names)
    if group == "trainer" and option not in ("gpu", "ddp"):
        hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    if group in ("callbacks", "logger"):
        from osteolightning.utils.config import instantiate_list

        assert instantiate_list(cfg[group], group) or option == "eval"


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_instantiates_and_runs(make_cfg, option):
    import torch

    if _segmentation_option("model", option):
        cfg = make_cfg("segment", [f"model={option}", "common=segmentation_tiny"])
        expected: tuple[int, ...] = (2, len(BONES), cfg.image_size, cfg.image_size)
    else:
        cfg = make_cfg("train", [f"model={option}", "common=tiny"])
        expected = (2, 3)
    model = hydra.utils.instantiate(cfg.model).eval()
    images = torch.zeros(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        if getattr(getattr(model.net, "embedder", None), "needs_mask", False):
            # a model that measures the bone inside each image's mask (model=bone_density)
            masks = torch.ones(2, cfg.image_size, cfg.image_size, dtype=torch.long)
            out = model.predict_batch({"image": images, "mask": masks})[0]
        else:
            out = model(images)
    assert out.shape == expected


def test_eval_config_requires_a_checkpoint(make_cfg):
    from omegaconf.errors import MissingMandatoryValue

    cfg = make_cfg("eval")
    assert cfg.data.evaluate_all is True
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.ckpt_path
