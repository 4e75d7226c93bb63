import io

import numpy as np
import pytest
from PIL import Image

from osteolightning.data.near_duplicates import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_CORRELATION,
    correlation,
    hamming,
    near_duplicate_pairs,
    perceptual_hash,
)
from osteolightning.data.phantom import generate_knee
from osteolightning.errors import ConfigError


@pytest.fixture(scope="module")
def knees() -> list[np.ndarray]:
    """Eight distinct phantom knees, (96, 96) float32 in [0, 1]."""
    return [generate_knee(seed=0, index=i, size=96).image for i in range(8)]


def _jpeg_resized(image: np.ndarray, side: int, quality: int = 85) -> np.ndarray:
    buffer = io.BytesIO()
    pil = Image.fromarray(np.rint(image * 255).astype(np.uint8)).resize((side, side))
    pil.save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer))


def test_identical_images_hash_the_same_whatever_the_dtype(knees):
    img = knees[0]
    assert hamming(perceptual_hash(img), perceptual_hash(img.copy())) == 0
    as_uint8 = np.rint(img * 255).astype(np.uint8)
    assert hamming(perceptual_hash(img), perceptual_hash(as_uint8)) <= 1
    assert 0 <= perceptual_hash(img) < 2**64


def test_resaved_copies_are_close_and_paired(knees):
    original = knees[0]
    rng = np.random.default_rng(0)
    noised = np.clip(original + rng.normal(0, 0.02, original.shape), 0, 1)
    copies = [noised, _jpeg_resized(original, 90), _jpeg_resized(original, 128, quality=60)]
    images = [original, *copies]
    hashes = [perceptual_hash(i) for i in images]  # any size and dtype
    for h in hashes[1:]:
        assert hamming(hashes[0], h) <= 2
    pairs = near_duplicate_pairs(hashes, images=images)
    assert {(i, j) for i, j, _ in pairs} == {(i, j) for i in range(4) for j in range(i + 1, 4)}


def test_distinct_knees_are_not_paired_at_the_defaults(knees):
    hashes = [perceptual_hash(k) for k in knees]
    assert near_duplicate_pairs(hashes, DEFAULT_MAX_DISTANCE, knees, DEFAULT_MIN_CORRELATION) == []
    assert max(correlation(a, b) for a in knees for b in knees if a is not b) < 0.95


@pytest.mark.parametrize("max_distance", [6, 20])  # multi-index search, blocked scan
def test_vectorised_search_equals_brute_force(max_distance):
    rng = np.random.default_rng(1)
    hashes = [int(h) for h in rng.integers(0, 2**64, size=2000, dtype=np.uint64)]
    hashes[7] = hashes[1500] ^ 0b101  # planted: distance 2
    hashes[8] = (1 << 63) | 1  # top bit set: uint64 handled as unsigned
    hashes[9] = 1 << 63
    hashes[10] = hashes[11] = hashes[1500]  # copies: distance 0 between them
    expected = []
    for i, a in enumerate(hashes):  # the reference: a plain double loop
        for j in range(i + 1, len(hashes)):
            distance = (a ^ hashes[j]).bit_count()
            if distance <= max_distance:
                expected.append((i, j, distance))
    assert near_duplicate_pairs(hashes, max_distance=max_distance) == expected
    assert (7, 1500, 2) in expected and (8, 9, 1) in expected and (10, 11, 0) in expected


def test_copies_of_one_image_are_paired_and_confirmed(knees):
    images = [knees[0], knees[1], knees[0].copy(), knees[2], knees[0].copy()]
    hashes = [perceptual_hash(i) for i in images]
    assert near_duplicate_pairs(hashes, images=images) == [(0, 2, 0), (0, 4, 0), (2, 4, 0)]
    assert near_duplicate_pairs([], max_distance=0) == []
    assert near_duplicate_pairs([hashes[0]], images=images[:1]) == []


def test_correlation_matches_numpy_reference():
    rng = np.random.default_rng(2)
    a = rng.random((32, 32)).astype(np.float32)  # 32x32: the resize is the identity
    b = (a + rng.normal(0, 0.3, a.shape)).astype(np.float32)
    assert correlation(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-5)
    assert correlation(np.zeros((5, 5)), np.zeros((7, 7))) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_distance": -1}, "`max_distance`"),
        ({"max_distance": 65}, "`max_distance`"),
        ({"max_distance": True}, "`max_distance`"),
        ({"min_correlation": 1.5}, "`min_correlation`"),
        ({"images": [np.zeros((4, 4))]}, "`images`"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        near_duplicate_pairs([1, 2], **kwargs)


def test_bad_hashes_and_images_are_rejected():
    with pytest.raises(ConfigError, match=r"hashes\[1\]"):
        near_duplicate_pairs([1, -3])
    with pytest.raises(ConfigError, match="`a`"):
        hamming(2**64, 0)
    with pytest.raises(ConfigError, match="2-D"):
        perceptual_hash(np.zeros((4, 4, 3)))
    with pytest.raises(ConfigError, match="finite"):
        perceptual_hash(np.full((4, 4), np.nan))
