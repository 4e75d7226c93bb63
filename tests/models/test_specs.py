"""The LightningModules' options as typed specs: the flat `model.*` keys of every config still
work, a checkpoint's flat hyper-parameters (as the modules saved them before the specs) still
build the same module, and a spec can be passed whole."""

from __future__ import annotations

import functools
import inspect
from dataclasses import replace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from osteolightning.errors import ConfigError
from osteolightning.models.classifier import KneeClassifier
from osteolightning.models.components.backbone import create_backbone
from osteolightning.models.segmenter import KneeSegmenter
from osteolightning.models.specs import ClassifierSpec, SegmenterSpec
from osteolightning.runs.checks import check_config
from tests.models.test_segmenter import SidesNet

CLASSES = ["normal", "osteopenia", "osteoporosis"]
#: the hyper-parameters checkpoints of the commit before the specs hold (debug=tiny with a
#: T-score head; debug=seg_tiny): the flat keys a checkpoint keeps, and their values
SAVED_CLASSIFIER = {
    "class_names": CLASSES, "image_size": 64, "in_chans": 1, "mean": [0.449], "std": [0.226],
    "class_weighting": "balanced", "label_smoothing": 0.0, "monitor": "val/f1_macro", "tta": [],
    "target": "t_score", "t_score_weight": 1.0, "class_weight": 1.0, "bmd_reference": None,
    "who_cutoffs": [-2.5, -1.0], "covariates": [], "covariate_coding": {},
}  # fmt: skip
SAVED_SEGMENTER = {
    "class_names": ["background", "a", "b"], "image_size": 64, "in_chans": 1, "mean": [0.5],
    "std": [0.5], "dice_weight": 1.0, "ce_weight": 1.0, "include_background": False,
    "deep_supervision_weights": [0.5714285714285714, 0.2857142857142857, 0.14285714285714285], "inference": "resize", "roi_size": 64,
    "sw_overlap": 0.25, "sw_batch_size": 4, "hd95_on_test": True, "monitor": "val/dice",
}  # fmt: skip


def _net() -> torch.nn.Module:
    return create_backbone("resnet10t", num_classes=3, in_chans=1)


def test_a_checkpoints_flat_hyperparameters_build_the_module_that_saved_them():
    model = KneeClassifier(_net(), **SAVED_CLASSIFIER)
    assert dict(model.hparams) == SAVED_CLASSIFIER
    assert model.spec.enabled and model.specs.inputs.image_size == 64
    segmenter = KneeSegmenter(SidesNet(), **SAVED_SEGMENTER)
    assert dict(segmenter.hparams) == SAVED_SEGMENTER


def test_a_spec_passed_whole_is_the_flat_options():
    flat = KneeClassifier(_net(), CLASSES, image_size=32, tta=["hflip"], label_smoothing=0.1)
    spec = ClassifierSpec.of(CLASSES, image_size=32, tta=["hflip"], label_smoothing=0.1)
    whole = KneeClassifier(_net(), spec=spec)
    assert dict(whole.hparams) == dict(flat.hparams) and whole.specs == spec
    assert spec.evaluation.tta == ("hflip",) and spec.loss.label_smoothing == 0.1
    with pytest.raises(ConfigError, match="either as one `spec` or as flat arguments"):
        KneeClassifier(_net(), spec=spec, image_size=32)
    seg = SegmenterSpec.of(["background", "bone"], image_size=48)
    assert seg.inference.roi_size == 48  # the tile side defaults to the network's input side
    assert KneeSegmenter(SidesNet(), spec=seg).hparams.roi_size == 48


def test_an_unknown_option_is_named_with_the_closest_one():
    with pytest.raises(ConfigError, match=r"`lable_smoothing` is not an argument of "
                       r"KneeClassifier\. Did you mean 'label_smoothing'\?"):  # fmt: skip
        KneeClassifier(_net(), CLASSES, lable_smoothing=0.1)
    with pytest.raises(ConfigError, match="Did you mean 'sw_overlap'"):
        KneeSegmenter(SidesNet(), ["background", "bone"], sw_overlop=0.5)


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        ("train", []),
        ("train", ["debug=tiny", "model/loss=focal", "model.tta=[hflip]"]),
        ("segment", []),
        ("segment", ["model=unet"]),
    ],
)
def test_every_flat_config_key_is_in_the_signature_and_instantiates(make_cfg, config, overrides):
    cfg = make_cfg(config, overrides)
    params = inspect.signature(KneeClassifier if config == "train" else KneeSegmenter).parameters
    keys = [k for k in cfg.model if k not in ("_target_", "net")]
    assert [k for k in keys if k not in params] == []
    check_config(cfg)  # the config check reads the same signature


def test_the_signature_is_the_declaring_classs_only():
    from osteolightning.models.fitted import FittedHeadClassifier

    assert "C" in inspect.signature(FittedHeadClassifier).parameters
    assert "options" in inspect.signature(KneeClassifier.__init__).parameters  # Lightning's view


def test_a_checkpoint_of_a_tiny_trainer_loads_with_load_from_checkpoint(tmp_path):
    sgd = functools.partial(torch.optim.SGD, lr=0.01)
    model = KneeClassifier(_net(), CLASSES, image_size=32, tta=["hflip"], optimizer=sgd)
    samples = [{"image": torch.randn(1, 32, 32), "label": i % 3, "index": i} for i in range(4)]
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(samples, batch_size=4))
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    loaded = KneeClassifier.load_from_checkpoint(tmp_path / "tiny.ckpt", net=_net())
    assert dict(loaded.hparams) == dict(model.hparams)
    # all but the optimiser, which a checkpoint never kept (it is the config's)
    assert replace(loaded.specs, optimization=model.specs.optimization) == model.specs
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded.eval().predict_proba(x), model.eval().predict_proba(x))
