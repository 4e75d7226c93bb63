"""The multi-index search finds exactly the pairs the blocked scan of all pairs finds."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from osteolightning.data import hash_search
from osteolightning.data.hash_search import (
    _blocked_scan,
    _multi_index_pairs,
    _plan,
    _probes,
    hamming_pairs,
)


def _hashes(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random uint64 hashes with planted near pairs (1 to 12 bits) and repeats."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    k = n // 10
    for t in range(k):  # hash t is hash k + t with (t % 12) + 1 random bits flipped
        bits = rng.choice(64, size=t % 12 + 1, replace=False)
        words[t] = words[k + t] ^ np.uint64(sum(1 << int(b) for b in bits))
    words[-8:-4] = words[0]  # four more copies of a hash that has near neighbours
    words[-4:] = np.uint64((1 << 63) | 0b101)  # four copies of a hash with the top bit set
    words[-12] = np.uint64(1 << 63)  # top bit: handled as unsigned (distance 2 and 1 to it)
    words[-11] = np.uint64((1 << 63) | 1)
    return words


def _python_pairs(words: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """The plainest reference: a double loop over Python ints."""
    values = [int(w) for w in words]
    return [
        (i, j, (values[i] ^ values[j]).bit_count())
        for i, j in combinations(range(len(values)), 2)
        if (values[i] ^ values[j]).bit_count() <= max_distance
    ]


def _as_list(pairs) -> list[tuple[int, int, int]]:
    return list(zip(*(x.tolist() for x in pairs), strict=True))


def _assert_same(found, expected) -> None:
    for got, want in zip(found, expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("max_distance", [0, 1, 6, 10, 20, 64])
def test_search_equals_the_blocked_scan(max_distance):
    words = _hashes(3000 if max_distance <= 10 else 1000, seed=max_distance)
    found = hamming_pairs(words, max_distance)
    _assert_same(found, _blocked_scan(words, max_distance))
    i, j, d = found
    assert (i < j).all() and (d <= max_distance).all()
    assert (np.diff(i * len(words) + j) > 0).all()  # sorted by (i, j), no pair twice


def test_search_equals_a_python_double_loop_at_the_default_distance():
    words = _hashes(600, seed=7)
    assert _plan(len(np.unique(words)), 6) is not None  # the index, not the scan, answers
    expected = _python_pairs(words, 6)
    assert _as_list(hamming_pairs(words, 6)) == expected
    assert (0, 60, 1) in expected and (594, 595, 0) in expected
    assert (588, 596, 2) in expected and (589, 599, 1) in expected and (596, 599, 0) in expected


@pytest.mark.parametrize("max_distance", [1, 2, 3, 6, 10])
def test_every_chunking_is_exact(max_distance):
    """Whatever number of chunks the cost model picks, no pair is lost or invented."""
    values = np.unique(_hashes(1500, seed=max_distance))
    expected = _blocked_scan(values, max_distance)
    for n_chunks in range(1, max_distance + 2):
        if _probes(64 // n_chunks, max_distance // n_chunks) > 3000:
            continue  # e.g. one 64-bit chunk at radius 10: 10^11 probes, never planned
        _assert_same(_multi_index_pairs(values, max_distance, n_chunks), expected)


@pytest.mark.parametrize("words", [[], [5], [5, 5], [5, 4]])
@pytest.mark.parametrize("max_distance", [0, 1, 6, 64])
def test_empty_single_and_pair_inputs(words, max_distance):
    words = np.array(words, dtype=np.uint64)
    _assert_same(hamming_pairs(words, max_distance), _blocked_scan(words, max_distance))


def test_equal_hashes_are_collapsed_before_the_search(monkeypatch):
    """3000 blank images (one hash) give their 4.5M distance-0 pairs, but 1 search entry."""
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**64 - 1, size=3500, dtype=np.uint64, endpoint=True)
    blank = words[0] ^ np.uint64(0b111)  # 3 bits from hash 0
    words[500:] = blank
    searched = []
    original = hash_search._multi_index_pairs
    monkeypatch.setattr(
        hash_search,
        "_multi_index_pairs",
        lambda values, *args: searched.append(len(values)) or original(values, *args),
    )
    i, j, d = hamming_pairs(words, 6)
    assert searched == [501]
    n_blank = len(words) - 500
    assert len(i) == n_blank * (n_blank - 1) // 2 + n_blank  # copies, and each with hash 0
    assert ((d == 0) == (i >= 500)).all() and (d[i == 0] == 3).all()
    _assert_same((i, j, d), _blocked_scan(words, 6))


def test_several_copies_on_both_sides_of_a_near_pair():
    words = np.array([9, 8, 9, 1 << 40, 8, 9], dtype=np.uint64)  # 9 and 8 differ in 1 bit
    assert _as_list(hamming_pairs(words, 1)) == _python_pairs(words, 1)
    assert len(_python_pairs(words, 1)) == 3 + 1 + 3 * 2


def test_full_buckets_fall_back_to_the_scan(monkeypatch):
    """Hashes that differ only in their lowest 12 bits fill the buckets of 3 chunks of 4."""
    rng = np.random.default_rng(4)
    words = np.unique(rng.integers(0, 1 << 12, size=2000, dtype=np.uint64)) | np.uint64(1 << 50)
    assert _multi_index_pairs(words, 6, _plan(len(words), 6), budget=1000) is None
    scanned = []
    original = hash_search._blocked_scan
    monkeypatch.setattr(
        hash_search, "_blocked_scan", lambda w, d: scanned.append(len(w)) or original(w, d)
    )
    found = hamming_pairs(words, 6)
    assert scanned == [len(words)]
    _assert_same(found, original(words, 6))


def test_the_planner_indexes_small_distances_and_scans_large_ones():
    assert _plan(100_000, 6) == 4  # 4 chunks of 16 bits, probed at radius 1
    assert all(_plan(100_000, d) is not None for d in range(1, 17))
    assert all(_plan(100_000, d) is None for d in range(20, 65))
    assert _plan(2, 6) is None  # one pair: nothing to index
