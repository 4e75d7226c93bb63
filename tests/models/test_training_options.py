"""Training options: loss from config, mixup, TTA, balanced sampler, fine-tuning, augmentation."""

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import hydra
import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from osteolightning.callbacks import FreezeBackbone
from osteolightning.data.datamodule import ArrayDataset, KneeDataModule
from osteolightning.data.transforms import ToNormalizedTensor, compose
from osteolightning.errors import ConfigError
from osteolightning.models.classifier import KneeClassifier
from osteolightning.models.components.backbone import create_backbone
from osteolightning.models.losses import cross_entropy, focal_loss
from osteolightning.models.schedulers import cosine_with_warmup
from osteolightning.utils.config import CONFIG_DIR

CLASSES = ["normal", "osteopenia", "osteoporosis"]
PRESETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "data" / "augment").glob("*.yaml"))


def _module(**kwargs):
    return KneeClassifier(create_backbone("resnet10t", num_classes=3), CLASSES, **kwargs)


# -- loss, mixup, TTA in the module ---------------------------------------------------------------
def test_loss_comes_from_config_and_is_checked_at_construction():
    loss = hydra.utils.instantiate(
        {"_target_": "osteolightning.models.losses.focal_loss", "_partial_": True, "gamma": 1.0}
    )
    module = _module(loss=loss)
    batch = {"image": torch.randn(4, 1, 32, 32), "label": torch.tensor([0, 1, 2, 1])}
    value, _, _ = module.model_step(batch)
    expected = focal_loss(module(batch["image"]), batch["label"], gamma=1.0)
    torch.testing.assert_close(value, expected)
    bad = hydra.utils.instantiate(
        {"_target_": "osteolightning.models.losses.focal_loss", "_partial_": True, "gamma": -2}
    )
    with pytest.raises(ConfigError, match="gamma"):
        _module(loss=bad)


def test_epoch_loss_stays_exact_with_soft_targets():
    """Tracking with sample weights gives the full-batch value however the batch is cut."""
    module = _module()
    module.class_weights.copy_(torch.tensor([0.4, 1.1, 1.5]))
    logits = torch.randn(6, 3)
    soft = torch.rand(6, 3).softmax(1)
    full = cross_entropy(logits, soft, module.class_weights)
    for part in (slice(0, 2), slice(2, 6)):
        part_loss = cross_entropy(logits[part], soft[part], module.class_weights)
        module._track_loss(module.train_loss, part_loss, soft[part])
    torch.testing.assert_close(module.train_loss.compute(), full)


def test_mixup_training_step_uses_soft_targets_and_hard_labels_for_metrics():
    torch.manual_seed(0)
    module = _module(mixup={"mixup_alpha": 0.4, "cutmix_alpha": 1.0})
    batch = {
        "image": torch.randn(5, 1, 32, 32),
        "label": torch.tensor([0, 1, 2, 1, 0]),
        "index": torch.arange(5),
        "path": [""] * 5,
    }
    seen = []
    module.train_metrics.update = lambda probs, targets: seen.append(targets)
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    assert torch.equal(seen[0], batch["label"])  # metrics get the hard labels


def test_tta_hflip_averages_the_original_and_flipped_softmax():
    module = _module(tta=["hflip"]).eval()
    batch = {"image": torch.randn(3, 1, 32, 32), "label": torch.tensor([0, 1, 2])}
    batch["index"] = torch.arange(3)
    with torch.no_grad():
        expected = (
            module(batch["image"]).softmax(1) + module(batch["image"].flip(3)).softmax(1)
        ) / 2
        predicted = module.predict_step(batch, 0)["probs"]
        tested = module.test_step(batch, 0)["probs"]
        plain = _module().eval()
        plain.load_state_dict(module.state_dict())
        without = plain.predict_step(batch, 0)["probs"]
    torch.testing.assert_close(predicted, expected)
    torch.testing.assert_close(tested, expected)
    assert not torch.allclose(without, expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tta": ["hlfip"]}, "Did you mean 'hflip'"),
        ({"mixup": {"prob": 2.0}}, "prob"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _module(**kwargs)


# -- balanced sampler -----------------------------------------------------------------------------
def _imbalanced_datamodule(tmp_path, **kwargs):
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5, dtype=np.int64)
    dm = KneeDataModule(None, CLASSES, cache_dir=tmp_path, batch_size=10, **kwargs)
    images = np.zeros((len(labels), 32, 32), np.uint8)
    to_tensor = ToNormalizedTensor([0.5], [0.25])
    dm.datasets["train"] = ArrayDataset(images, labels, np.arange(len(labels)), to_tensor)
    return dm


def test_balanced_sampler_draws_classes_uniformly(tmp_path):
    torch.manual_seed(0)
    dm = _imbalanced_datamodule(tmp_path, sampler="balanced")
    drawn: Counter = Counter()
    loader = dm.train_dataloader()  # once per fit, as Lightning does
    epochs = []
    for epoch in range(10):
        loader.sampler.set_epoch(epoch)  # as Lightning does at each epoch's start
        epochs.append(torch.cat([b["index"] for b in loader]))
        assert len(epochs[-1]) == 100  # num_samples = len(train)
        drawn.update(dm.datasets["train"].labels[epochs[-1].numpy()].tolist())
    assert not torch.equal(epochs[0], epochs[1])  # a new draw every epoch
    shares = np.array([drawn[c] for c in range(3)]) / sum(drawn.values())
    np.testing.assert_allclose(shares, 1 / 3, atol=0.05)


def test_balanced_sampler_under_ddp_gives_each_rank_its_share(tmp_path):
    torch.manual_seed(0)
    per_rank = []
    for rank in range(2):
        dm = _imbalanced_datamodule(tmp_path, sampler="balanced")
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, current_epoch=0)
        sampler = dm.train_dataloader().sampler
        per_rank.append([index for index, _epoch in sampler])  # (position, epoch) keys
    assert [len(s) for s in per_rank] == [50, 50]
    labels = dm.datasets["train"].labels[np.concatenate(per_rank)]
    assert min(np.bincount(labels, minlength=3)) > 15  # not 80/15/5


def test_unknown_sampler_raises(tmp_path):
    with pytest.raises(ConfigError, match="`sampler`"):
        KneeDataModule(None, CLASSES, cache_dir=tmp_path, sampler="weighted")


# -- fine-tuning schedule -------------------------------------------------------------------------
class _Images(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(16, 1, 32, 32, generator=g), torch.arange(16) % 3

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "index": torch.tensor(i), "path": ""}


class _Snapshots(L.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.lrs: list[list[float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.net.named_parameters()})
        self.lrs.append([g["initial_lr"] for g in trainer.optimizers[0].param_groups])


def test_freeze_backbone_then_unfreeze_at_a_lower_lr(tmp_path):
    torch.manual_seed(0)
    lr = 1e-2
    module = _module(
        class_weighting="none",
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr),
        scheduler=lambda optimizer, total_steps: cosine_with_warmup(optimizer, total_steps),
    )
    initial = {k: v.detach().clone() for k, v in module.net.named_parameters()}
    head = {f"fc.{k}" for k, _ in module.net.fc.named_parameters()}
    snaps = _Snapshots()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[FreezeBackbone(freeze_epochs=1, backbone_lr_factor=0.1), snaps],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(_Images(), batch_size=4))
    after_frozen, after_unfrozen = snaps.states
    for name, value in after_frozen.items():
        changed = not torch.equal(value, initial[name])
        assert changed == (name in head), name
    assert any(
        not torch.equal(after_unfrozen[n], after_frozen[n]) for n in initial if n not in head
    )
    assert snaps.lrs == [[lr], [lr, pytest.approx(0.1 * lr)]]
    groups = trainer.optimizers[0].param_groups
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])  # on the same schedule
    assert all(p.requires_grad for p in module.parameters())


def test_layer_decay_scales_each_block_below_the_head():
    net = create_backbone("resnet10t", num_classes=3)
    callback = FreezeBackbone(freeze_epochs=1, backbone_lr_factor=0.5, layer_decay=0.75)
    groups = callback._groups(net, head_lr=1.0)
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs, reverse=True) and len(lrs) > 2
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert ratios == pytest.approx([0.75] * len(ratios))  # one block deeper: x 0.75
    assert lrs[0] == pytest.approx(0.5 * 0.75)
    covered = [id(p) for g in groups for p in g["params"]]
    assert sorted(covered) == sorted(map(id, callback.backbone_parameters(net).values()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"freeze_epochs": -1}, "freeze_epochs"),
        ({"backbone_lr_factor": 0}, "backbone_lr_factor"),
        ({"layer_decay": 1.5}, "layer_decay"),
    ],
)
def test_bad_finetune_arguments_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FreezeBackbone(**kwargs)


# -- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_augment_preset_transforms_a_uint8_grayscale_image(make_cfg, preset):
    assert {"none", "light", "radiograph", "strong"} <= set(PRESETS)
    cfg = make_cfg("train", ["debug=tiny", f"data/augment={preset}"])
    pipeline = compose(hydra.utils.instantiate(cfg.data.get("train_transforms")))
    if preset == "none":
        assert pipeline is None
        return
    rng = np.random.default_rng(0)
    for _ in range(5):
        image = rng.integers(0, 256, (96, 96), dtype=np.uint8)
        out = pipeline(image=image)["image"]
        assert out.shape == (96, 96) and out.dtype == np.uint8


def test_default_config_has_every_option_and_it_is_off(make_cfg):
    cfg = make_cfg("train")
    assert cfg.model.loss._target_.endswith("losses.cross_entropy")
    assert cfg.model.mixup.mixup_alpha == 0 and cfg.model.mixup.cutmix_alpha == 0
    assert list(cfg.model.tta) == [] and cfg.data.sampler is None
    assert list(cfg.data.train_transforms) == [
        "affine",
        "hflip",
        "brightness_contrast",
        "gamma",
    ]  # light
    finetune = hydra.utils.instantiate(cfg.callbacks.finetune)
    assert isinstance(finetune, FreezeBackbone) and finetune.freeze_epochs == 0


def test_a_tiny_run_with_every_option_on(make_cfg):
    from osteolightning.train import train

    cfg = make_cfg(
        "train",
        [
            "debug=tiny",
            "model/loss=focal",
            "model.mixup.mixup_alpha=0.4",
            "model.mixup.cutmix_alpha=1.0",
            "model.tta=[hflip]",
            "model.class_weighting=none",
            "data.sampler=balanced",
            "data/augment=strong",
            "+callbacks.finetune._target_=osteolightning.callbacks.FreezeBackbone",
            "+callbacks.finetune.freeze_epochs=1",
            "+callbacks.finetune.layer_decay=0.75",
        ],
    )
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["test/loss"]) and 0 <= metrics["test/f1_macro"] <= 1
    assert len(objects["trainer"].optimizers[0].param_groups) > 2
