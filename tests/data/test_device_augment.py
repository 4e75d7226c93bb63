"""The device path's batch augmentation against albumentations (the CPU path), and the
DataModule's data.on_device modes."""

from __future__ import annotations

import albumentations as A
import cv2
import hydra
import numpy as np
import pytest
import torch
from scipy import stats

from osteolightning.data.device_augment import DeviceAugment
from osteolightning.data.transforms import compose
from osteolightning.errors import ConfigError
from osteolightning.utils.config import compose_config


def _image(h: int = 80, w: int = 96) -> np.ndarray:
    coarse = np.random.default_rng(0).random((8, 8), dtype=np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth * 200 + 20, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "transform",
    [
        A.Affine(rotate=(7, 7), translate_percent=(0.03, 0.03), scale=(1.05, 1.05), p=1),
        A.Affine(
            rotate=(-12, -12),
            translate_percent={"x": (-0.05, -0.05), "y": (0.02, 0.02)},
            scale={"x": (0.9, 0.9), "y": (1.1, 1.1)},
            shear=(4, 4),
            p=1,
        ),
        A.Affine(rotate=(5, 5), translate_px=(3, 3), fill=40, p=1),
        A.HorizontalFlip(p=1),
        A.VerticalFlip(p=1),
        A.RandomBrightnessContrast(
            brightness_limit=(0.08, 0.08), contrast_limit=(-0.07, -0.07), p=1
        ),
        A.RandomGamma(gamma_limit=(88, 88), p=1),
        A.RandomGamma(gamma_limit=(112, 112), p=1),
    ],
    ids=lambda t: type(t).__name__,
)
def test_a_fixed_transform_equals_albumentations(transform):
    """With each range fixed to one value, the device output is albumentations' output up to
    its rounding to uint8 (under one grey level), borders included."""
    image = _image()
    reference = A.Compose([transform])(image=image)["image"].astype(np.float32)
    device = DeviceAugment(A.Compose([transform]))
    u = torch.full((1, device.draws), 0.5)
    u[:, 0] = 0  # applied
    out, _ = device(torch.from_numpy(image)[None], None, u)
    diff = np.abs(out[0].numpy() - reference)
    assert diff.max() <= 1.0 and diff.mean() < 0.6


def _albumentations_draws(transform: A.BasicTransform, n: int) -> dict[str, np.ndarray]:
    """What albumentations itself draws for ``transform``, ``n`` times."""
    transform.set_random_seed(0)
    image = np.zeros((64, 64), np.uint8)
    out: dict[str, list[float]] = {"apply": []}
    for _ in range(n):
        out["apply"].append(transform.py_random.random() < transform.p)
        params = transform.get_params_dependent_on_data({"shape": (64, 64)}, {"image": image})
        params.update(transform.get_params())
        for key in ("rotate", "alpha", "beta", "gamma"):
            if key in params:
                value = params[key] / 255 if key == "beta" else params[key]
                out.setdefault(key, []).append(value)
        if "scale" in params:
            out.setdefault("scale_x", []).append(params["scale"]["x"])
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def test_the_light_preset_draws_like_albumentations():
    """The configured preset (osteolightning/conf/data/augment/light.yaml) on the device: how
    often each transform applies and the distribution of its parameters, against albumentations'
    own draws (two-sample Kolmogorov-Smirnov) and the configured ranges."""
    cfg = compose_config("train", ["data/augment=light"])
    pipeline = compose(hydra.utils.instantiate(cfg.data.train_transforms))
    device = DeviceAugment(pipeline)
    n = 4000
    ours = device.params(torch.rand(n, device.draws, generator=torch.Generator().manual_seed(1)))
    names = {
        "affine": {"rotate": "rotate", "scale_x": "scale_x"},
        "brightness_contrast": {"contrast": "alpha", "brightness": "beta"},
        "gamma": {"gamma": "gamma"},
    }
    for step, transform, drawn in zip(device.steps, pipeline.transforms, ours, strict=True):
        theirs = _albumentations_draws(transform, n)
        rate = drawn["apply"].float().mean().item()
        assert abs(rate - step.p) < 4 * np.sqrt(step.p * (1 - step.p) / n)
        assert abs(rate - theirs["apply"].mean()) < 6 * np.sqrt(step.p * (1 - step.p) / n)
        for ours_key, their_key in names.get(step.kind, {}).items():
            mine = drawn[ours_key].numpy()
            if their_key == "alpha":
                mine = 1 + mine
            if their_key == "gamma":
                mine = mine / 100
            lo, hi = step.ranges[ours_key]
            assert lo <= drawn[ours_key].min() and drawn[ours_key].max() <= hi
            assert stats.ks_2samp(mine, theirs[their_key]).pvalue > 1e-3, (step.kind, ours_key)


def test_images_and_masks_stay_aligned():
    """A bright square on a dark ground, its mask the square: after the light preset (warps,
    flips, exposure) the bright pixels are still the mask's, up to the square's rim."""
    cfg = compose_config("train", ["data/augment=light"])
    device = DeviceAugment(compose(hydra.utils.instantiate(cfg.data.train_transforms)))
    masks = torch.zeros(64, 64, 64, dtype=torch.long)
    masks[:, 20:44, 12:36] = 1  # off-centre, so a flip moves it
    images = (40 + 160 * masks).to(torch.uint8)
    u = torch.rand(64, device.draws, generator=torch.Generator().manual_seed(3))
    out, moved = device(images, masks, u)
    assert moved.dtype == torch.long and set(moved.unique().tolist()) <= {0, 1}
    agree = ((out > 120) == (moved == 1)).float().mean(dim=(1, 2))
    assert agree.min() > 0.97
    assert (moved != masks).any()  # something moved


def test_a_transform_it_cannot_reproduce_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"\['CLAHE'\].*data.train_transforms.<name>=null"):
        DeviceAugment(A.Compose([A.CLAHE(p=0.3), A.HorizontalFlip()]))
    with pytest.raises(ConfigError, match="BORDER_CONSTANT"):
        DeviceAugment(A.Compose([A.Affine(border_mode=cv2.BORDER_REFLECT)]))


def _datamodule(cache_dir, **overrides):
    args = [f"data.{k}={v}" for k, v in overrides.items()]
    cfg = compose_config("train", ["debug=tiny", *args], cache_dir=cache_dir)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    return dm


def _device_batch(dm, mode):
    dm.device_path.mode = mode
    batch = next(iter(dm._loader("train", train=True)))
    return dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0), batch


def test_stream_and_resident_batches_are_the_same_and_eval_keeps_the_cpu_path(cache_dir):
    dm = _datamodule(cache_dir, on_device="stream")
    streamed, shipped = _device_batch(dm, "stream")
    assert shipped["image"].dtype == torch.uint8 and shipped["image"].ndim == 3  # uint8 pixels
    dm = _datamodule(cache_dir, on_device="resident")
    resident, shipped = _device_batch(dm, "resident")
    assert shipped["image"].shape == (len(shipped["label"]),)  # no pixels shipped
    cpu = _datamodule(cache_dir)
    reference = next(iter(cpu.train_dataloader()))
    for batch in (streamed, resident):
        assert batch["image"].shape == reference["image"].shape
        assert batch["image"].dtype == torch.float32
        assert torch.equal(batch["index"], reference["index"])  # the same order
    torch.testing.assert_close(streamed["image"], resident["image"])
    val = next(iter(dm.val_dataloader()))
    assert val["image"].dtype == torch.float32 and dm.on_before_batch_transfer(val, 0) is val


def test_on_device_is_checked(cache_dir):
    cfg = compose_config("train", ["debug=tiny", "data.on_device=gpu"], cache_dir=cache_dir)
    with pytest.raises(Exception, match=r"`on_device` to be one of \[None, 'stream'") as info:
        hydra.utils.instantiate(cfg.data)
    assert isinstance(info.value, ConfigError) or isinstance(info.value.__cause__, ConfigError)


def test_a_batch_moves_its_tensors_and_keeps_its_names(cache_dir):
    dm = _datamodule(cache_dir)
    batch = next(iter(dm.train_dataloader()))
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved.keys() == batch.keys()
    assert moved["path"] is batch["path"] and isinstance(moved["image"], torch.Tensor)
    nested = dm.transfer_batch_to_device({"x": [torch.ones(2)]}, torch.device("cpu"), 0)
    assert torch.equal(nested["x"][0], torch.ones(2))  # anything else: Lightning's own
