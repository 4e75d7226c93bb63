"""Segmentation data end to end: trees, the phantom's masks, aligned batches, joint augmentation,
masks as classifier input, and every bad-input path naming its file."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import albumentations as A
import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from osteolightning.data.cache import PreprocessedCache
from osteolightning.data.datamodule import KneeDataModule
from osteolightning.data.folders import FolderSource
from osteolightning.data.masks import MaskReadError, letterbox_mask, read_mask
from osteolightning.data.phantom import CLASS_NAMES, MASK_LABELS
from osteolightning.data.seg_datamodule import SegmentationDataModule
from osteolightning.data.seg_sources import SegmentationTreeSource
from osteolightning.data.sources import ManifestSource
from osteolightning.data.splits import SPLIT_NAMES
from osteolightning.data.transforms import compose
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.utils.config import CONFIG_DIR

BONES = list(MASK_LABELS)  # background, femur, tibia, fibula, patella
MEAN, STD = 0.449, 0.226


@pytest.fixture(scope="module")
def seg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One preprocessed-image cache for the module (images are decoded once per size)."""
    return tmp_path_factory.mktemp("seg-cache")


def _rows(phantom_dir: Path) -> list[dict[str, str]]:
    with open(phantom_dir / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _dm(source, cache: Path, class_names=BONES, **kwargs) -> SegmentationDataModule:
    args = dict(image_size=96, batch_size=8, cache_dir=cache, mean=[MEAN], std=[STD])
    args.update(kwargs)
    return SegmentationDataModule(source, class_names, **args)


def _pixels(image: torch.Tensor) -> np.ndarray:
    """A normalised (1, H, W) image tensor back to its uint8 pixels."""
    return np.rint((image[0].numpy() * STD + MEAN) * 255).astype(np.uint8)


def _binary_tree(phantom_dir: Path, root: Path, n: int = 24) -> Path:
    """images/*.png copied from the phantom, masks/*.png written as black/white palette PNGs."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for row in _rows(phantom_dir)[:n]:
        name = Path(row["image"]).name
        shutil.copy(phantom_dir / row["image"], root / "images" / name)
        bone = np.asarray(Image.open(phantom_dir / row["mask"])) > 0
        mask = Image.fromarray(bone.astype(np.uint8), mode="P")
        mask.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        mask.save(root / "masks" / name)
    return root


# -- batches ------------------------------------------------------------------------------------
def test_seg_configs_instantiate_the_datamodule(make_cfg, phantom_dir: Path) -> None:
    """data=seg_tiny under the segmentation config, as osteo-segment instantiates it."""
    cfg = make_cfg("segment", ["debug=seg_tiny"])
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, SegmentationDataModule)
    assert dm.class_names == BONES and dm.mask_format == "label"
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["mask"].max() < len(BONES) and batch["image"].shape[0] == cfg.data.batch_size


def test_phantom_batches_carry_aligned_label_masks(phantom_dir: Path, seg_cache: Path) -> None:
    dm = _dm(ManifestSource(phantom_dir / "manifest.csv"), seg_cache)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"image", "mask", "index", "path"}
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (1, 96, 96)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape[1:] == (96, 96)
    assert batch["index"].dtype == torch.int64
    cache = PreprocessedCache(seg_cache, 96)
    for image, mask, index, path in zip(
        batch["image"], batch["mask"], batch["index"], batch["path"], strict=True
    ):
        sample = dm.samples[int(index)]
        assert str(sample.path) == path
        # the phantom is 96 px: the mask file itself, pixel for pixel, next to its own image
        np.testing.assert_array_equal(mask.numpy(), np.asarray(Image.open(sample.mask)))
        np.testing.assert_array_equal(_pixels(image), cache.load([sample.path])[0])
        bone, pixels = mask.numpy() > 0, _pixels(image).astype(float)
        assert pixels[bone].mean() > pixels[~bone].mean() + 10  # bone is bright


def test_masks_are_letterboxed_with_the_image_geometry(phantom_dir: Path, seg_cache: Path) -> None:
    dm = _dm(ManifestSource(phantom_dir / "manifest.csv"), seg_cache, image_size=64)
    dm.setup()
    for sample, mask in zip(dm.samples[:10], dm.masks[:10], strict=True):
        np.testing.assert_array_equal(mask, letterbox_mask(read_mask(sample.mask, 5), 64))
    item = dm.datasets["test"][0]
    assert item["mask"].shape == (64, 64) and int(item["mask"].max()) < len(BONES)


def test_splits_are_disjoint_covering_and_grouped(phantom_dir: Path, seg_cache: Path) -> None:
    dm = _dm(ManifestSource(phantom_dir / "manifest.csv"), seg_cache)
    dm.setup()
    parts = [set(dm.datasets[name].indices.tolist()) for name in SPLIT_NAMES]
    assert all(parts) and sum(map(len, parts)) == len(dm.samples) == 60
    assert set().union(*parts) == set(range(60))
    rows = dm.split_rows()  # label -1 everywhere: written as ""
    assert {r[2] for r in rows} == {""} and len(rows) == 60
    split_of_group: dict[int, set[str]] = {}
    for split, _, _, _, group, _ in rows:
        split_of_group.setdefault(group, set()).add(split)
    assert all(len(s) == 1 for s in split_of_group.values())  # both knees of a person together
    assert len(split_of_group) < 60  # the phantom has persons with two knees
    summary = dm.summary()
    for name in SPLIT_NAMES:
        assert f"{name:5s}:" in summary
    assert "femur=0." in summary and "patella=0." in summary
    fractions = dm.class_fractions("train")
    assert abs(sum(fractions) - 1) < 1e-9 and all(f > 0 for f in fractions)
    assert dm.class_counts("train")[0] == len(dm.datasets["train"])


def test_label_names_stratify_the_split(phantom_dir: Path, seg_cache: Path) -> None:
    dm = _dm(ManifestSource(phantom_dir / "manifest.csv"), seg_cache, label_names=list(CLASS_NAMES))
    dm.setup()
    assert all(s.label >= 0 for s in dm.samples)
    assert {r[2] for r in dm.split_rows()} == set(CLASS_NAMES)
    for name in SPLIT_NAMES:  # stratified: every class in every split
        assert set(dm.datasets[name].labels.tolist()) == {0, 1, 2}


def test_segmentation_tree_with_binary_palette_masks(
    phantom_dir: Path, seg_cache: Path, tmp_path: Path
) -> None:
    root = _binary_tree(phantom_dir, tmp_path / "tree")
    source = SegmentationTreeSource(root)
    dm = _dm(source, seg_cache, class_names=["background", "bone"], mask_format="binary")
    dm.setup()
    assert len(dm.samples) == 24 and all(s.label == -1 for s in dm.samples)
    batch = next(iter(dm.train_dataloader()))
    assert set(torch.unique(batch["mask"]).tolist()) == {0, 1}
    for mask, index in zip(batch["mask"], batch["index"], strict=True):
        sample = dm.samples[int(index)]
        original = Path(phantom_dir / "masks" / sample.path.name)
        np.testing.assert_array_equal(mask.numpy(), np.asarray(Image.open(original)) > 0)
    assert "segmentation tree" in dm.summary() and "bone=0." in dm.summary()


def _tree_with_copies(phantom_dir: Path, root: Path) -> tuple[Path, list[str]]:
    """A binary tree plus two copies of its first image: one with the same mask, one with the
    mask flipped left-right (a different annotation of the same radiograph)."""
    root = _binary_tree(phantom_dir, root, n=20)
    first = sorted((root / "images").iterdir())[0]
    for name, flip in (("copy_same.png", False), ("copy_other.png", True)):
        shutil.copy(first, root / "images" / name)
        mask = Image.open(root / "masks" / first.name)
        (mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else mask).save(
            root / "masks" / name
        )
    return root, [first.name, "copy_same.png", "copy_other.png"]


def test_copies_with_different_masks_are_a_conflict(
    phantom_dir: Path, seg_cache: Path, tmp_path: Path
) -> None:
    root, (first, same, other) = _tree_with_copies(phantom_dir, tmp_path / "tree")
    args = dict(class_names=["background", "bone"], mask_format="binary")
    with pytest.raises(DataSourceError, match=rf"{first}' \(mask [0-9a-f]{{10}}\).*copy_other"):
        _dm(SegmentationTreeSource(root), seg_cache, on_label_conflict="error", **args).setup()

    dm = _dm(SegmentationTreeSource(root), seg_cache, on_label_conflict="drop", **args)
    dm.setup()
    names = {s.path.name for s in dm.samples}
    assert len(names) == 19 and {first, same, other}.isdisjoint(names)  # the whole group
    assert sorted(Path(row[1]).name for row in dm.conflicts) == sorted([first, same, other])
    assert {row[3] for row in dm.conflicts} == {"dropped"}

    kept = _dm(SegmentationTreeSource(root), seg_cache, on_label_conflict="keep", **args)
    kept.setup()
    split = {s.path.name: kept.split_codes[i] for i, s in enumerate(kept.samples)}
    assert len(split) == 22 and split[first] == split[same] == split[other]


def test_copies_with_the_same_mask_are_no_conflict(
    phantom_dir: Path, seg_cache: Path, tmp_path: Path
) -> None:
    root, (first, same, other) = _tree_with_copies(phantom_dir, tmp_path / "tree")
    (root / "images" / other).unlink()
    (root / "masks" / other).unlink()
    dm = _dm(
        SegmentationTreeSource(root),
        seg_cache,
        class_names=["background", "bone"],
        mask_format="binary",
        on_label_conflict="error",
    )
    dm.setup()
    split = {s.path.name: dm.split_codes[i] for i, s in enumerate(dm.samples)}
    assert len(split) == 21 and not dm.conflicts and split[first] == split[same]


def test_joint_hflip_keeps_image_and_mask_aligned(phantom_dir: Path, seg_cache: Path) -> None:
    source = ManifestSource(phantom_dir / "manifest.csv")
    plain = _dm(source, seg_cache)
    flipped = _dm(source, seg_cache, train_transforms=[A.HorizontalFlip(p=1.0)])
    plain.setup()
    flipped.setup()
    for i in range(5):
        a, b = plain.datasets["train"][i], flipped.datasets["train"][i]
        assert int(a["index"]) == int(b["index"])
        np.testing.assert_array_equal(b["mask"].numpy(), a["mask"].numpy()[:, ::-1])
        np.testing.assert_array_equal(_pixels(b["image"]), _pixels(a["image"])[:, ::-1])
        assert not torch.equal(a["mask"], b["mask"])  # the knee is not symmetric
    # evaluation splits are never augmented
    assert torch.equal(plain.datasets["val"][0]["mask"], flipped.datasets["val"][0]["mask"])


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in Path(CONFIG_DIR, "data", "augment").glob("*.yaml"))
)
def test_every_augmentation_preset_works_with_masks(
    preset: str, make_cfg, phantom_dir: Path
) -> None:
    cfg = make_cfg("train", [f"data/augment={preset}"])
    transforms = hydra.utils.instantiate(cfg.data.train_transforms)
    augment = compose(transforms)  # what the DataModule builds from data.train_transforms
    assert (augment is None) == (preset == "none")
    if augment is None:
        return
    augment.set_random_seed(0)
    correlations = []
    for row in _rows(phantom_dir)[:4]:
        mask = np.asarray(Image.open(phantom_dir / row["mask"]))
        image = np.where(mask > 0, 200, 40).astype(np.uint8)  # bright exactly where bone is
        for _ in range(8):
            out = augment(image=image, mask=mask)
            assert out["image"].shape == out["mask"].shape == mask.shape
            assert out["mask"].dtype == np.uint8
            # nearest-neighbour for masks: no blended, out-of-range class values
            assert set(np.unique(out["mask"]).tolist()) <= set(MASK_LABELS.values())
            bone = (out["mask"] > 0).ravel()
            correlations.append(np.corrcoef(out["image"].astype(float).ravel(), bone)[0, 1])
    # the bone moved with the image (a mask left in place correlates about 0.7 on average;
    # intensity transforms, blur and cut-out holes lower a joint pair's value a little)
    assert min(correlations) > 0.7 and np.mean(correlations) > 0.93, preset


# -- masks as classifier input ---------------------------------------------------------------
def _masked_manifest(phantom_dir: Path, tmp_path: Path, drop_mask_of: int | None = None) -> Path:
    path = tmp_path / "with_masks.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "mask"])
        for i, row in enumerate(_rows(phantom_dir)):
            mask = "" if i == drop_mask_of else str(phantom_dir / row["mask"])
            writer.writerow([str(phantom_dir / row["image"]), row["label"], mask])
    return path


def test_mask_input_apply_zeroes_images_outside_the_mask(
    phantom_dir: Path, seg_cache: Path, tmp_path: Path
) -> None:
    manifest = _masked_manifest(phantom_dir, tmp_path)
    args = dict(image_size=96, batch_size=8, cache_dir=seg_cache, mean=[MEAN], std=[STD])
    dm = KneeDataModule(ManifestSource(manifest), list(CLASS_NAMES), mask_input="apply", **args)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    # (key, augmented, group: what the fitted-head models' feature cache and inner CV use)
    assert set(batch) == {"image", "label", "index", "path", "key", "augmented", "group"}
    for image, index in zip(batch["image"], batch["index"], strict=True):
        sample = dm.samples[int(index)]
        bone = np.asarray(Image.open(sample.mask)) > 0
        pixels = _pixels(image)
        assert (pixels[~bone] == 0).all()  # zero outside the bone
        original = PreprocessedCache(seg_cache, 96).load([sample.path])[0]
        np.testing.assert_array_equal(pixels[bone], original[bone])  # untouched inside
    assert {r[2] for r in dm.split_rows()} <= set(CLASS_NAMES)
    plain = KneeDataModule(ManifestSource(manifest), list(CLASS_NAMES), **args)
    plain.setup()  # without mask_input the same manifest gives whole images
    assert (_pixels(plain.datasets["train"][0]["image"]) > 0).mean() > 0.5


def test_mask_input_crop_takes_the_bone_at_a_higher_resolution(
    phantom_dir: Path, seg_cache: Path, tmp_path: Path
) -> None:
    manifest = _masked_manifest(phantom_dir, tmp_path)
    args = dict(image_size=48, batch_size=8, cache_dir=seg_cache, mean=[MEAN], std=[STD])
    dm = KneeDataModule(
        ManifestSource(manifest), list(CLASS_NAMES), mask_input="crop", mask_crop_from=96, **args
    )
    dm.setup()
    item = dm.datasets["train"][0]
    assert item["image"].shape == (1, 48, 48)
    sample = dm.samples[int(item["index"])]
    bone = letterbox_mask((np.asarray(Image.open(sample.mask)) > 0).astype(np.uint8), 96)
    rows, cols = np.nonzero(bone)
    box = max(rows.max() - rows.min(), cols.max() - cols.min())
    assert box < 90  # the bone fills less of the whole knee than of the crop ...
    cropped = dm.masks[int(item["index"])] > 0
    assert cropped.mean() > (bone > 0).mean()  # ... which it fills more of
    assert "crop48" in item["key"]  # cached features of the crop are not the whole image's
    plain = KneeDataModule(ManifestSource(manifest), list(CLASS_NAMES), **args)
    plain.setup()
    assert plain.datasets["train"][0]["key"] != item["key"]


def test_mask_input_needs_a_mask_for_every_image(
    phantom_dir: Path, seg_cache: Path, tmp_path: Path
) -> None:
    manifest = _masked_manifest(phantom_dir, tmp_path, drop_mask_of=3)
    missing = Path(_rows(phantom_dir)[3]["image"]).name
    dm = KneeDataModule(
        ManifestSource(manifest), list(CLASS_NAMES), mask_input="apply", cache_dir=seg_cache
    )
    with pytest.raises(
        DataSourceError,
        match=rf"1 image\(s\) .* have no mask: .*{missing}.*mask_input=apply needs a mask",
    ):
        dm.setup()
    with pytest.raises(ConfigError, match="mask_input.*'apply'.*'crop'"):
        KneeDataModule(ManifestSource(manifest), list(CLASS_NAMES), mask_input="cut")


# -- bad input ----------------------------------------------------------------------------------
def test_sample_without_mask_is_an_error_naming_it(
    phantom_dir: Path, seg_cache: Path, tmp_path: Path
) -> None:
    manifest = _masked_manifest(phantom_dir, tmp_path, drop_mask_of=5)
    dm = _dm(ManifestSource(manifest), seg_cache)
    name = Path(_rows(phantom_dir)[5]["image"]).name
    with pytest.raises(
        DataSourceError, match=rf"have no mask: .*{name}.*Segmentation needs a mask"
    ):
        dm.setup()


def test_mask_size_mismatch_names_both_files_and_shapes(
    phantom_dir: Path, seg_cache: Path, tmp_path: Path
) -> None:
    root = _binary_tree(phantom_dir, tmp_path / "tree", n=12)
    bad = sorted((root / "masks").iterdir())[4]
    Image.fromarray(np.zeros((80, 96), np.uint8)).save(bad)
    dm = _dm(SegmentationTreeSource(root), seg_cache, ["background", "bone"], mask_format="binary")
    pattern = rf"Mask '.*masks/{bad.name}' is 80x96 .* image '.*images/{bad.name}' is 96x96"
    with pytest.raises(DataSourceError, match=pattern):
        dm.setup()
    # with on_bad_image=skip the pair is left out and listed
    dm = _dm(
        SegmentationTreeSource(root, on_bad_image="skip"),
        seg_cache,
        ["background", "bone"],
        mask_format="binary",
        on_bad_image="skip",
        val_fraction=0.25,
        test_fraction=0.25,
    )
    dm.setup()
    assert len(dm.samples) == 11 and bad.name not in {s.path.name for s in dm.samples}
    assert [p for p, _ in dm.skipped] == [str(bad)] and "80x96" in dm.skipped[0][1]


def test_out_of_range_and_unreadable_masks_stop_setup(
    phantom_dir: Path, seg_cache: Path, tmp_path: Path
) -> None:
    source = ManifestSource(phantom_dir / "manifest.csv")
    first = Path(_rows(phantom_dir)[0]["mask"]).name
    with pytest.raises(MaskReadError, match=rf"{first}.*accepted values are 0..1"):
        _dm(source, seg_cache, ["background", "bone"]).setup()  # the phantom has 5 classes
    root = _binary_tree(phantom_dir, tmp_path / "tree", n=12)
    broken = sorted((root / "masks").iterdir())[2]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    dm = _dm(SegmentationTreeSource(root), seg_cache, ["background", "bone"], mask_format="binary")
    with pytest.raises(MaskReadError, match=rf"Cannot read mask '.*{broken.name}'"):
        dm.setup()


def test_bad_arguments_are_config_errors(phantom_dir: Path, seg_cache: Path) -> None:
    source = ManifestSource(phantom_dir / "manifest.csv")
    with pytest.raises(ConfigError, match="binary.*5 class names"):
        _dm(source, seg_cache, mask_format="binary")
    with pytest.raises(ConfigError, match="sampler.*no class to balance"):
        _dm(source, seg_cache, sampler="balanced")
    with pytest.raises(ConfigError, match="mask_input.*targets"):
        _dm(source, seg_cache, mask_input="apply")
    with pytest.raises(ConfigError, match=r"mask classes \['background', 'bone'\].*normal"):
        _dm(source, seg_cache, list(CLASS_NAMES), mask_classes=["background", "bone"])
    with pytest.raises(ConfigError, match="class-folder tree.*holds no masks.*data=seg_folder"):
        _dm(FolderSource(phantom_dir), seg_cache)
    with pytest.raises(ConfigError, match="mask_threshold"):
        _dm(source, seg_cache, ["background", "bone"], mask_format="binary", mask_threshold=-1)


# -- the segmentation-tree source ---------------------------------------------------------------
def _tree(root: Path, images: list[str], masks: list[str]) -> Path:
    for folder, names in (("images", images), ("masks", masks)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"pixels are not read here")
    return root


def test_tree_pairs_same_names_and_unique_stems(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "t",
        ["a.png", "b.jpg", "sub/c.tif", ".DS_Store"],
        ["a.png", "b.png", "sub/c.png", "Thumbs.db"],
    )
    (root / "manifest.csv").write_text("ignored\n")  # other root entries are not data
    source = SegmentationTreeSource(root)
    samples = source.samples(["background", "bone"])
    pairs = [
        (s.path.relative_to(root).as_posix(), s.mask.relative_to(root).as_posix()) for s in samples
    ]
    assert pairs == [
        ("images/a.png", "masks/a.png"),
        ("images/b.jpg", "masks/b.png"),
        ("images/sub/c.tif", "masks/sub/c.png"),
    ]
    assert all(s.label == -1 and s.path.is_absolute() for s in samples)
    assert {Path(p).name for p, _ in source.skipped} == {".DS_Store", "Thumbs.db"}
    assert "segmentation tree" in source.describe() and str(root) in source.describe()


def test_tree_image_without_mask_names_image_and_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", ["a.png", "lonely.png"], ["a.png"])
    with pytest.raises(DataSourceError) as info:
        SegmentationTreeSource(root).samples(None)
    message = str(info.value)
    assert "images/lonely.png" in message and f"'{root / 'masks'}'" in message
    assert "ROOT/images/* and ROOT/masks/*" in message


def test_tree_orphan_masks_are_listed(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", ["a.png"], ["a.png", "ghost1.png", "ghost2.png"])
    with pytest.raises(
        DataSourceError, match=r"(?s)2 file\(s\).*masks/ghost1.png.*no image.*ghost2"
    ):
        SegmentationTreeSource(root).samples(None)


def test_tree_ambiguous_stems_and_non_images_are_errors(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", ["x.jpg", "x.tif", "y.png"], ["x.png", "y.png", "notes.txt"])
    with pytest.raises(DataSourceError) as info:
        SegmentationTreeSource(root).samples(None)
    message = str(info.value)
    assert (
        "ambiguous name 'x.*'" in message and "notes.txt" in message and "not an image" in message
    )


def test_tree_skip_leaves_unusable_files_out_and_lists_them(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", ["a.png", "lonely.png"], ["a.png", "ghost.png", "notes.txt"])
    source = SegmentationTreeSource(root, on_bad_image="skip")
    samples = source.samples(None)
    assert [s.path.name for s in samples] == ["a.png"]
    skipped = {Path(p).name: reason for p, reason in source.skipped}
    assert set(skipped) == {"lonely.png", "ghost.png", "notes.txt"}
    assert "no mask" in skipped["lonely.png"] and "no image" in skipped["ghost.png"]


@pytest.mark.parametrize("present", [[], ["images"], ["masks"]])
def test_tree_missing_folders_say_the_layout(tmp_path: Path, present: list[str]) -> None:
    root = tmp_path / "t"
    root.mkdir()
    for name in present:
        (root / name).mkdir()
    with pytest.raises(DataSourceError, match=r"has no .*Expected the layout ROOT/images/\*"):
        SegmentationTreeSource(root).samples(None)
    with pytest.raises(DataSourceError, match="does not exist"):
        SegmentationTreeSource(tmp_path / "nowhere").samples(None)


def test_manifest_without_labels_for_segmentation(tmp_path: Path, phantom_dir: Path) -> None:
    manifest = tmp_path / "seg.csv"
    rows = _rows(phantom_dir)[:3]
    manifest.write_text(
        "image,mask\n"
        + "".join(f"{phantom_dir / r['image']},{phantom_dir / r['mask']}\n" for r in rows)
    )
    samples = ManifestSource(manifest).samples(None)
    assert [s.label for s in samples] == [-1, -1, -1] and all(s.mask for s in samples)
    with pytest.raises(DataSourceError, match="lacks required column.*label"):
        ManifestSource(manifest).samples(list(CLASS_NAMES))  # a classifier still needs labels
    labelled = ManifestSource(phantom_dir / "manifest.csv").samples(None)
    assert labelled[0].label == -1 and labelled[0].extra["label"] in CLASS_NAMES
