"""The preprocessed-image cache heals itself and names an unwritable folder.

Every kind of damaged entry (truncated, empty, garbage, foreign, corrupt pixels, an old .npy)
is logged naming the entry and its image and rebuilt, so the result equals a clean build.
"""

from __future__ import annotations

import errno
import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteolightning.data import cache as cache_module
from osteolightning.data.cache import PreprocessedCache
from osteolightning.data.phantom import generate_knee
from osteolightning.errors import ConfigError

SIZE = 48


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(3):
        path = tmp_path / "images" / f"k{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        knee = generate_knee(seed=0, index=i, size=64).image
        Image.fromarray(np.rint(knee * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _clean(tmp_path: Path, images: list[Path]) -> np.ndarray:
    return PreprocessedCache(tmp_path / "clean", SIZE, workers=1).load(images)


def _damage(entry: Path, how: str, other: Path) -> None:
    data = entry.read_bytes()
    if how == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        entry.write_bytes(b"")
    elif how == "garbage":  # the right size, but not an entry
        entry.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif how == "foreign":  # another image's entry under this image's key
        entry.write_bytes(other.read_bytes())
    elif how == "corrupt":  # one pixel flipped: the checksum no longer matches
        entry.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif how == "npy":  # an array of another shape, as older versions stored entries
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((SIZE // 2, SIZE), np.uint8))
        entry.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "foreign", "corrupt", "npy"])
def test_a_damaged_entry_is_rebuilt_and_logged(tmp_path, images, how, caplog):
    clean = _clean(tmp_path, images)
    cache = PreprocessedCache(tmp_path / "cache", SIZE, workers=1)
    cache.prepare(images)
    digests = cache.hashes(images)
    entry = cache._entry(digests[1])
    _damage(entry, how, cache._entry(digests[0]))
    with caplog.at_level(logging.WARNING, logger="osteolightning.data.cache"):
        arrays, infos = cache.load_with_info(images)
    np.testing.assert_array_equal(arrays, clean)  # equal to a clean build
    assert infos[1].height == 64 and infos[1].width == 64
    assert str(entry) in caplog.text and str(images[1]) in caplog.text  # both named
    caplog.clear()
    np.testing.assert_array_equal(cache.load(images), clean)  # healed: quiet the next time
    assert "rebuild" not in caplog.text


def test_prepare_rebuilds_entries_of_the_wrong_size(tmp_path, images, caplog):
    cache = PreprocessedCache(tmp_path / "cache", SIZE, workers=1)
    cache.prepare(images)
    entry = cache._entry(cache.hashes(images)[2])
    entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="osteolightning.data.cache"):
        cache.prepare(images)
    assert "truncated or foreign" in caplog.text and str(images[2]) in caplog.text
    assert entry.stat().st_size == cache._entry_bytes


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.EACCES, "Permission denied"), (errno.ENOSPC, "No space left on device")],
)
def test_an_unwritable_cache_folder_is_named(tmp_path, images, monkeypatch, code, words):
    """Simulated (tests may run as root, whom file modes do not stop)."""

    def refuse(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(cache_module, "atomic_write_bytes", refuse)
    monkeypatch.setattr(cache_module, "atomic_write_json", refuse)
    root = tmp_path / "cache"
    with pytest.raises(ConfigError) as info:
        PreprocessedCache(root, SIZE, workers=1).prepare(images)
    message = str(info.value)
    assert f"'{root}'" in message and "OSTEO_CACHE_DIR" in message and words in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_cache_folder_is_named(tmp_path, images):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="OSTEO_CACHE_DIR"):
            PreprocessedCache(root, SIZE, workers=1).load(images)
    finally:
        root.chmod(0o755)


def test_an_entry_is_its_header_and_pixels(tmp_path, images):
    """One small file per image (speed is measured in benchmarks/prepare.py)."""
    cache = PreprocessedCache(tmp_path / "cache", SIZE, workers=1)
    cache.load(images)
    entry = cache._entry(cache.hashes(images)[0])
    assert entry.stat().st_size == 48 + SIZE * SIZE  # header + pixels, nothing else
