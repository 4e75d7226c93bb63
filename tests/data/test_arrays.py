"""The data set as one memory-mapped array: built once and atomically, opened (never copied) by
DataLoader workers and DDP ranks, views for the splits, private copies only where pixels change.

Counting, not timing: array types, pickled bytes, resident memory of a process reading a file.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, get_worker_info

from osteolightning.data.arrays import MappedImages, array_shape, build_array
from osteolightning.data.cache import PreprocessedCache
from osteolightning.data.datamodule import KneeDataModule
from osteolightning.data.sources import ManifestSource

CLASS_NAMES = ["normal", "osteopenia", "osteoporosis"]
FAST = dict(image_size=64, batch_size=8, near_duplicate_distance=None)


def _random_array(path: Path, n: int = 16, side: int = 32) -> np.ndarray:
    data = np.random.default_rng(0).integers(0, 256, (n, side, side), dtype=np.uint8)

    def fill(out) -> None:
        out[:5] = data[:5]
        for i in range(5, len(data)):
            out[i] = data[i]

    assert build_array(path, data.shape, fill) is True
    return data


def test_views_index_the_file_and_pickle_as_a_path(tmp_path):
    data = _random_array(tmp_path / "a.npy")
    images = MappedImages(tmp_path / "a.npy")
    assert isinstance(images.array, np.memmap) and images.shape == data.shape
    view = images[np.array([5, 2, 9])]  # the split of a DataModule: no pixel copied
    assert isinstance(view, MappedImages) and view.shape == (3, 32, 32)
    np.testing.assert_array_equal(np.asarray(view), data[[5, 2, 9]])
    assert isinstance(view[1], np.ndarray) and view[1].flags.writeable  # a private copy
    np.testing.assert_array_equal(view[1], data[2])
    np.testing.assert_array_equal(np.asarray(view[1:]), data[[2, 9]])  # a view of a view
    np.testing.assert_array_equal(list(view)[-1], data[9])
    blob = pickle.dumps(view)
    assert len(blob) < 1000 < data.nbytes  # the path and the rows, not the pixels
    np.testing.assert_array_equal(np.asarray(pickle.loads(blob)), data[[5, 2, 9]])
    with pytest.raises(IndexError):
        view[3]


def test_a_built_array_is_not_built_again_and_a_truncated_one_is(tmp_path):
    path = tmp_path / "a.npy"
    data = _random_array(path)
    assert build_array(path, data.shape, lambda out: pytest.fail("rebuilt")) is False
    path.write_bytes(path.read_bytes()[:-10])  # truncated: no longer complete
    assert array_shape(path) is None
    assert build_array(path, data.shape, lambda out: out.__setitem__(slice(None), 7)) is True
    assert np.load(path, mmap_mode="r").max() == 7
    assert not list(tmp_path.glob("*.tmp.npy"))


def _build_in_process(path: str, queue) -> None:
    def fill(out) -> None:
        out[:] = 3

    queue.put(build_array(Path(path), (64, 64, 64), fill))


@pytest.mark.skipif(sys.platform != "linux", reason="fork and flock")
def test_two_processes_building_one_array_build_it_once(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [
        context.Process(target=_build_in_process, args=(str(tmp_path / "a.npy"), queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(queue.get(timeout=5) for _ in procs) == [False, True]
    assert array_shape(tmp_path / "a.npy") == (64, 64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.npy.lock"]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _touch_all(path: str, queue) -> None:
    images = MappedImages(path)
    anon, file = _rss_kib("RssAnon"), _rss_kib("RssFile")
    total = sum(int(images[i].sum()) for i in range(len(images)))  # every page read
    queue.put((total, _rss_kib("RssAnon") - anon, _rss_kib("RssFile") - file))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc")
def test_reading_every_image_adds_shared_file_pages_not_private_memory(tmp_path):
    path = tmp_path / "big.npy"
    n, side = 256, 256  # 16 MiB

    def fill(out) -> None:
        out[:] = 1

    build_array(path, (n, side, side), fill)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    proc = context.Process(target=_touch_all, args=(str(path), queue))
    proc.start()
    total, anon_kib, file_kib = queue.get(timeout=60)
    proc.join(10)
    assert total == n * side * side
    assert file_kib > 12 * 1024  # the file's pages, shared through the page cache
    assert anon_kib < 4 * 1024  # no private copy of the 16 MiB


@pytest.fixture
def phantom_manifest(phantom_dir: Path) -> Path:
    return phantom_dir / "manifest.csv"


def _worker_arrays(tmp: Path):
    def init(worker_id: int) -> None:
        images = get_worker_info().dataset.images
        (tmp / f"worker{worker_id}").write_text(
            f"{type(images).__name__} {type(images.array).__name__}"
        )

    return init


def test_the_datamodule_maps_its_images_and_workers_and_ranks_share_them(
    phantom_manifest, tmp_path
):
    dm = KneeDataModule(
        ManifestSource(phantom_manifest), CLASS_NAMES, cache_dir=tmp_path / "cache", **FAST
    )
    dm.setup()
    train = dm.datasets["train"]
    assert isinstance(train.images, MappedImages)  # a view of the mapped file
    assert {d.images.path for d in dm.datasets.values()} == {train.images.path}
    reference = PreprocessedCache(tmp_path / "cache", 64).load([s.path for s in dm.samples])
    np.testing.assert_array_equal(np.asarray(train.images), reference[train.indices])
    item = train[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    # a spawned DDP rank (or a spawned worker) receives the DataModule pickled: no pixels
    pixels = sum(d.images.nbytes for d in dm.datasets.values())
    assert len(pickle.dumps(dm.datasets)) < pixels / 4
    # forked DataLoader workers find the mapping, not a copy
    loader = DataLoader(
        train,
        batch_size=4,
        num_workers=2,
        worker_init_fn=_worker_arrays(tmp_path),
        multiprocessing_context="fork" if sys.platform == "linux" else None,
    )
    next(iter(loader))
    for worker in range(2):
        assert (tmp_path / f"worker{worker}").read_text() == "MappedImages memmap"


def test_apply_masks_edits_a_private_copy_not_the_cache(phantom_manifest, tmp_path, caplog):
    plain = KneeDataModule(
        ManifestSource(phantom_manifest), CLASS_NAMES, cache_dir=tmp_path / "cache", **FAST
    )
    plain.setup()
    masked = KneeDataModule(
        ManifestSource(phantom_manifest),
        CLASS_NAMES,
        cache_dir=tmp_path / "cache",
        mask_input="apply",
        **FAST,
    )
    with caplog.at_level(logging.INFO, logger="osteolightning.data.cache"):
        masked.setup()
    assert "Built the data set's image array" not in caplog.text  # the same array, reused
    images = masked.datasets["train"].images
    assert isinstance(images, np.ndarray) and images.flags.writeable
    masks = masked.masks[masked.datasets["train"].indices]
    assert (images[masks == 0] == 0).all() and images.any()
    # the shared file is untouched: the plain DataModule still sees the whole knees
    full = np.asarray(plain.datasets["train"].images)
    assert (full[masks == 0] > 0).any()


def test_a_damaged_array_is_rebuilt_from_the_entries(phantom_manifest, tmp_path, caplog):
    cache = PreprocessedCache(tmp_path / "cache", 64)
    paths = [s.path for s in ManifestSource(phantom_manifest).samples(CLASS_NAMES)][:10]
    first = cache.open_array(paths)
    expected = np.asarray(first.images)
    with open(first.images.path, "r+b") as handle:
        handle.truncate(os.path.getsize(first.images.path) - 100)
    with caplog.at_level(logging.WARNING, logger="osteolightning.data.cache"):
        again = cache.open_array(paths)
    assert "truncated, foreign" in caplog.text and str(first.images.path) in caplog.text
    np.testing.assert_array_equal(np.asarray(again.images), expected)
    assert again.hashes == first.hashes and again.infos == first.infos


def _build_big(path: str, queue) -> None:
    file = _rss_kib("RssFile")

    def fill(out) -> None:
        for i in range(1024):
            out[i] = np.full((256, 256), i % 256, np.uint8)

    build_array(Path(path), (1024, 256, 256), fill)
    queue.put(_rss_kib("RssFile") - file)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc")
def test_building_an_array_does_not_map_it_into_the_builder(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    proc = context.Process(target=_build_big, args=(str(tmp_path / "big.npy"), queue))
    proc.start()
    file_kib = queue.get(timeout=60)
    proc.join(10)
    assert file_kib < 16 * 1024  # written through the page cache, not 64 MiB mapped
    assert np.load(tmp_path / "big.npy", mmap_mode="r")[200, 3, 3] == 200
