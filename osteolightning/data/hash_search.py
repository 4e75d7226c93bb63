"""Every pair of 64-bit hashes within a Hamming distance, found without scanning all pairs.

:func:`hamming_pairs` is exact (it returns the same pairs as comparing every hash with every
other) but, for the small distances near-duplicate search uses, it only looks at a small
fraction of the pairs. It works in three steps:

1. Equal hashes are collapsed: the search runs over the distinct values, and each group of
   equal hashes adds its distance-0 pairs at the end. Ten thousand blank images (one hash)
   cost one search entry, not fifty million candidate pairs.
2. Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming space with
   multi-index hashing", CVPR 2012): the 64 bits are cut into ``m`` disjoint chunks. Two
   hashes within ``max_distance`` bits differ in at most ``max_distance // m`` bits of some
   chunk (pigeonhole), so every such pair is found by looking, for each hash and each chunk,
   in the buckets of the chunk values at most ``max_distance // m`` bits away from its own.
   Each candidate is then checked on all 64 bits (XOR, popcount). ``m`` is chosen by a cost
   model: many narrow chunks make few probes but large buckets; fewer wide chunks the
   reverse. At 100 000 random hashes and ``max_distance=6`` this is 4 chunks of 16 bits,
   probed at distance 0 and 1: about 5·10⁶ candidates instead of 5·10⁹ pairs.
3. Where no chunking beats it (large ``max_distance``, where chunks get too narrow to prune,
   or few hashes), or where the buckets turn out much fuller than the cost model assumed
   (hashes far from uniform), the blocked scan of the whole pair matrix is used instead.

Everything runs in vectorised numpy; memory stays bounded by verifying candidates in batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import combinations

import numpy as np

__all__ = ["HASH_BITS", "hamming_pairs"]

#: Bits of a hash.
HASH_BITS = 64

# Relative costs per unit of work, fitted to timings with numpy 2 on a 2-core machine (about
# 4 ns per scanned pair): one pair of the blocked scan (contiguous XOR, popcount, compare), one
# candidate of the index (gathers, XOR, popcount, compare, dedupe), one bucket look-up (two
# searchsorted). Only their ratios matter, and only near the crossovers.
_SCAN_COST = 1.0
_CANDIDATE_COST = 2.0
_PROBE_COST = 5.0
_SCAN_BLOCK = 1 << 21  # pairs per step of the scan (16 MB of uint64): faster than 512 rows
_BATCH = 1 << 21  # candidates verified per step: a few 16 MB temporaries
# Popcount of every byte, for numpy < 2.0 (no np.bitwise_count).
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (i, j, distance), each (P,)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Bits set in each uint64, as uint8, same shape."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words)
    as_bytes = words.view(np.uint8).reshape(*words.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


def _empty() -> Pairs:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)


def _blocked_scan(words: np.ndarray, max_distance: int) -> Pairs:
    """Every pair ``i < j`` within ``max_distance``, sorted by ``(i, j)``: the O(N²) reference.

    The pair matrix is scanned in blocks of rows, each row against the hashes after it: XOR
    then popcount; memory stays ``O(block x N)``.

    Args:
        words: ``(N,)`` uint64 hashes (repeats allowed: equal hashes pair at distance 0).
        max_distance: in ``[0, 64]``.
    """
    rows, cols, dists = [], [], []
    block = max(1, _SCAN_BLOCK // max(len(words), 1))  # rows per step
    for start in range(0, len(words), block):
        stop = min(start + block, len(words))
        distance = _popcount(words[start:stop, None] ^ words[None, start:])  # (B, N - start)
        # Keep only j > i: column c of the block is index start + c.
        upper = np.arange(stop - start)[:, None] < np.arange(len(words) - start)[None, :]
        r, c = np.nonzero((distance <= max_distance) & upper)
        rows.append(r + start)
        cols.append(c + start)
        dists.append(distance[r, c])
    if not rows:
        return _empty()
    # np.nonzero is row-major and blocks come in order: pairs are already sorted by (i, j).
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(dists)


def _chunk_widths(n_chunks: int) -> tuple[int, ...]:
    """Widths of ``n_chunks`` disjoint chunks covering the 64 bits, as even as possible."""
    return tuple(HASH_BITS // n_chunks + (c < HASH_BITS % n_chunks) for c in range(n_chunks))


def _flips(width: int, radius: int) -> list[int]:
    """Every mask of at most ``radius`` set bits among ``width``: 0 first."""
    return [
        sum(1 << b for b in bits)
        for k in range(min(radius, width) + 1)
        for bits in combinations(range(width), k)
    ]


def _probes(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(min(radius, width) + 1))


def _scan_cost(n: int) -> float:
    return _SCAN_COST * n * (n - 1) / 2


def _plan(n: int, max_distance: int) -> int | None:
    """Number of chunks of the cheapest exact multi-index for ``n`` distinct hashes.

    Returns ``None`` where the blocked scan is expected to be cheaper. The model assumes
    uniformly spread hashes: a chunk of ``w`` bits probed at ``P`` values per hash costs
    ``n * P`` look-ups and ``n² / 2 * P / 2**w`` candidates.
    """
    best, best_cost = None, _scan_cost(n)
    for n_chunks in range(1, min(max_distance + 1, HASH_BITS) + 1):
        radius = max_distance // n_chunks
        cost = 0.0
        for width in _chunk_widths(n_chunks):
            probes = _probes(width, radius)
            cost += _PROBE_COST * n * probes + _CANDIDATE_COST * n * n / 2 * probes / 2**width
        if cost < best_cost:
            best, best_cost = n_chunks, cost
    return best


def _expand(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs ``starts[r], …, starts[r] + lengths[r] - 1``, concatenated.

    Returns:
        ``(row, position)``, each ``(sum(lengths),)`` int64: the run each entry comes from
        and its value.
    """
    row = np.repeat(np.arange(len(lengths)), lengths)
    first = np.cumsum(lengths) - lengths  # where each run starts in the output
    return row, np.arange(len(row)) + (starts - first)[row]


def _batches(lengths: np.ndarray, limit: int) -> Iterator[slice]:
    """Consecutive row slices whose lengths sum to at most ``limit`` (or one longer row)."""
    ends = np.cumsum(lengths)
    lo = 0
    while lo < len(lengths):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + limit, side="right")))
        yield slice(lo, hi)
        lo = hi


def _multi_index_pairs(
    words: np.ndarray, max_distance: int, n_chunks: int, budget: float = math.inf
) -> Pairs | None:
    """Pairs of distinct hashes within ``max_distance`` by multi-index hashing, exact.

    Args:
        words: ``(N,)`` distinct uint64 hashes.
        max_distance: in ``[1, 64]``.
        n_chunks: chunks the 64 bits are cut into, in ``[1, 64]``; each is probed at radius
            ``max_distance // n_chunks``.
        budget: candidates to verify at most; past it the search gives up.

    Returns:
        ``(i, j, distance)`` with ``i < j`` sorted by ``(i, j)``; ``None`` when the candidates
        outgrow ``budget`` (buckets much fuller than the cost model assumed).
    """
    n = len(words)
    radius = max_distance // n_chunks
    keys_found, dists_found = [], []
    offset = 0
    for width in _chunk_widths(n_chunks):
        chunk = (words >> np.uint64(offset)) & np.uint64((1 << width) - 1)  # (N,) values
        offset += width
        perm = np.argsort(chunk, kind="stable")
        chunk = chunk[perm]  # sorted: a bucket is a run
        for flip in _flips(width, radius):
            if flip == 0:  # own bucket: the entries after the anchor
                anchor = np.arange(n)
                start, stop = anchor + 1, np.searchsorted(chunk, chunk, side="right")
            else:  # the bucket `flip` away, seen from the smaller value only (once per pair)
                target = chunk ^ np.uint64(flip)
                anchor = np.flatnonzero(target > chunk)
                target = target[anchor]
                start = np.searchsorted(chunk, target, side="left")
                stop = np.searchsorted(chunk, target, side="right")
            lengths = stop - start
            occupied = lengths > 0
            anchor, start, lengths = anchor[occupied], start[occupied], lengths[occupied]
            budget -= int(lengths.sum())
            if budget < 0:
                return None
            for rows in _batches(lengths, _BATCH):
                row, position = _expand(start[rows], lengths[rows])
                a, b = perm[anchor[rows][row]], perm[position]  # (C,) candidate pairs
                distance = _popcount(words[a] ^ words[b])
                hit = distance <= max_distance
                a, b = a[hit], b[hit]
                keys_found.append(np.minimum(a, b) * n + np.maximum(a, b))
                dists_found.append(distance[hit])
    if not keys_found:
        return _empty()
    # a pair close in several chunks was found several times: keep one, sorted by (i, j)
    keys, first = np.unique(np.concatenate(keys_found), return_index=True)
    return keys // n, keys % n, np.concatenate(dists_found)[first]


def _expand_copies(inverse: np.ndarray, counts: np.ndarray, pairs: Pairs) -> Pairs:
    """Pairs of distinct values → pairs of the hashes, with the distance-0 pairs of copies.

    Args:
        inverse: ``(N,)`` index of each hash's value among the distinct values.
        counts: ``(U,)`` copies of each distinct value.
        pairs: ``(a, b, distance)`` over the distinct values.
    """
    order = np.argsort(inverse, kind="stable")  # hashes grouped by value, ascending within
    first = np.cumsum(counts) - counts  # where each value's group starts in `order`
    a, b, distance = pairs
    # every copy of a with every copy of b
    row, pos_a = _expand(first[a], counts[a])
    row_b, pos_b = _expand(first[b][row], counts[b][row])
    i, j = order[pos_a[row_b]], order[pos_b]
    dist = distance[row][row_b]
    # each copy with the copies after it in its own group, at distance 0
    repeated = np.flatnonzero(counts > 1)
    row, pos = _expand(first[repeated], counts[repeated] - 1)
    end = (first + counts)[repeated][row]
    row_c, partner = _expand(pos + 1, end - pos - 1)
    i, j = (
        np.concatenate([np.minimum(i, j), order[pos[row_c]]]),
        np.concatenate([np.maximum(i, j), order[partner]]),
    )
    dist = np.concatenate([dist, np.zeros(len(partner), np.uint8)])
    sort = np.lexsort((j, i))
    return i[sort], j[sort], dist[sort]


def hamming_pairs(words: np.ndarray, max_distance: int) -> Pairs:
    """Every pair of hashes within ``max_distance`` bits.

    Exact: the same pairs as comparing every hash with every other, found by multi-index
    hashing over the distinct values where that is cheaper (see the module docstring).

    Args:
        words: ``(N,)`` uint64 hashes; equal hashes pair at distance 0.
        max_distance: in ``[0, 64]`` (not checked here).

    Returns:
        ``(i, j, distance)``: ``(P,)`` int64, int64, uint8 arrays with ``i < j``, sorted by
        ``(i, j)``.

    Example:
        >>> i, j, d = hamming_pairs(np.array([0, 0b11, 0b111 << 40, 0], np.uint64), 2)
        >>> list(zip(i.tolist(), j.tolist(), d.tolist()))
        [(0, 1, 2), (0, 3, 0), (1, 3, 2)]
    """
    values, inverse, counts = np.unique(words, return_inverse=True, return_counts=True)
    pairs = None
    if max_distance == 0 or len(values) < 2:
        pairs = _empty()
    elif (n_chunks := _plan(len(values), max_distance)) is not None:
        # give up (and scan) once the candidates would cost more than the whole scan
        budget = _scan_cost(len(values)) / _CANDIDATE_COST
        pairs = _multi_index_pairs(values, max_distance, n_chunks, budget)
    if pairs is None:
        pairs = _blocked_scan(values, max_distance)
    return _expand_copies(inverse.ravel(), counts, pairs)
