"""Near-duplicate images: perceptual hashes, fast all-pairs search, and a pixel check.

Two radiographs that are the same exposure saved twice (re-compressed, resized, converted
from RGB to gray) have different bytes, so content hashes miss them, yet a model that sees one
in training and the other in testing is graded on a memorised image. The search runs in two
stages:

1. :func:`perceptual_hash`, a 64-bit DCT hash (pHash, Zauner 2010), is computed per image;
   :func:`near_duplicate_pairs` finds every pair within ``max_distance`` bits by multi-index
   hashing (:mod:`.hash_search`: exact, and 100 000 hashes in well under a second at the
   default distance, where comparing all pairs would take tens of seconds);
2. each candidate pair is confirmed by the Pearson correlation of the two images at 32x32
   (:func:`correlation`), which removes the hash collisions between merely similar knees.

A blank or constant image is a near-duplicate of nothing: every such image hashes alike (no
pattern sets a bit), yet two of them share no content, only the lack of it. Such images are
left out of the confirmed pairs (byte copies of one file remain exact copies elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy import fft as sfft

from osteolightning.data.hash_search import HASH_BITS, hamming_pairs
from osteolightning.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MIN_CORRELATION",
    "HASH_BITS",
    "correlation",
    "hamming",
    "near_duplicate_pairs",
    "perceptual_hash",
]

#: Hamming distance up to which two hashes are near-duplicate candidates (of 64 bits).
DEFAULT_MAX_DISTANCE = 6
#: Pearson r at 32x32 a candidate pair needs to be confirmed.
DEFAULT_MIN_CORRELATION = 0.99

_SIDE = 32  # the image is reduced to 32x32 before the DCT (and before correlating)
_BLOCK = 8  # the 8x8 lowest frequencies give the 64 bits


def _as_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check a 2-D finite image and return it as float32."""
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise ConfigError(
            f"Expected argument `{name}` to be a non-empty 2-D array (H, W), but got shape "
            f"{arr.shape}."
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ConfigError(f"Expected argument `{name}` to hold finite values, but got NaN/inf.")
    return arr


def _small(image: np.ndarray, name: str = "image") -> np.ndarray:
    """``(H, W)`` → ``(32, 32)`` float32 by area averaging (anti-aliased on downscale)."""
    return cv2.resize(_as_image(image, name), (_SIDE, _SIDE), interpolation=cv2.INTER_AREA)


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash) of a grayscale image.

    The image is reduced to 32x32 with area averaging (``cv2.INTER_AREA``), transformed with
    an orthonormal 2-D DCT-II (``scipy.fft.dctn``), and the 8x8 block of lowest frequencies
    is kept. Each of its 64 coefficients gives one bit: 1 where it exceeds the median of the
    63 AC coefficients (the block without the DC term, which only measures mean brightness).
    Bit ``8 * u + v`` is coefficient ``(u, v)``; the DC bit is 1 for any non-negative image.

    The hash is invariant to brightness scale and to resizing, and changes by a few bits
    under JPEG re-compression or mild noise; unrelated images differ in about 32 bits.

    Args:
        image: ``(H, W)`` array, uint8 or float, any size.

    Returns:
        The hash, an ``int`` in ``[0, 2**64)``.

    Raises:
        ConfigError: ``image`` is not a non-empty 2-D array of finite values.

    Example:
        >>> y, x = np.mgrid[0:64, 0:64] / 64
        >>> img = (0.5 + 0.25 * np.sin(7 * x) * np.cos(5 * y) + 0.2 * x * y).astype(np.float32)
        >>> hamming(perceptual_hash(img), perceptual_hash((img * 255).astype(np.uint8)))
        0
    """
    coeffs = sfft.dctn(_small(image).astype(np.float64), norm="ortho")  # (32, 32)
    block = coeffs[:_BLOCK, :_BLOCK].ravel()  # (64,), block[0] is the DC term
    bits = block > np.median(block[1:])
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def _check_hash(value: object, name: str | None = None) -> int:
    name = name or "hash"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(
            f"Expected argument `{name}` to be an integer hash in [0, 2**64), but got {value!r}."
        )
    value = int(value)
    if not 0 <= value < 1 << HASH_BITS:
        raise ConfigError(
            f"Expected argument `{name}` to be an integer hash in [0, 2**64), but got {value}."
        )
    return value


def _hash_array(hashes: Sequence[int]) -> np.ndarray:
    """``(N,)`` uint64 from a sequence of hashes; names the first bad entry."""
    try:
        values = [
            int(h) for h in hashes if isinstance(h, int | np.integer) and not isinstance(h, bool)
        ]
        if len(values) == len(hashes) and all(0 <= v < 1 << HASH_BITS for v in values):
            return np.array(values, dtype=np.uint64)
    except (TypeError, ValueError):
        pass
    for i, h in enumerate(hashes):
        _check_hash(h, f"hashes[{i}]")
    raise ConfigError(f"Expected argument `hashes` to be integer hashes, but got {hashes!r}.")


def hamming(a: int, b: int) -> int:
    """Number of bits in which two hashes differ.

    Example:
        >>> hamming(0b1011, 0b0001)
        2
    """
    return bin(_check_hash(a, "a") ^ _check_hash(b, "b")).count("1")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images after reducing both to 32x32.

    Reducing first makes the measure indifferent to size and to JPEG noise, and cheap.

    Args:
        a: ``(H1, W1)`` image, uint8 or float.
        b: ``(H2, W2)`` image, uint8 or float.

    Returns:
        r in ``[-1, 1]``. If either image is constant, 1.0 when both reduce to the same
        pixels and 0.0 otherwise.

    Raises:
        ConfigError: an image is not a non-empty 2-D array of finite values.
    """
    return _pearson(_small(a, "a"), _small(b, "b"))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
    if x.min() == x.max() or y.min() == y.max():  # constant: r is undefined
        return 1.0 if np.allclose(x, y) else 0.0
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float(np.clip((x * y).sum() / denom, -1.0, 1.0))


def near_duplicate_pairs(
    hashes: Sequence[int],
    max_distance: int = DEFAULT_MAX_DISTANCE,
    images: Sequence[np.ndarray] | None = None,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    blank: Sequence[bool] | None = None,
) -> list[tuple[int, int, int]]:
    """Every pair of hashes within ``max_distance`` bits, optionally confirmed on pixels.

    The search is exact (every pair within ``max_distance``, as a comparison of all pairs
    would find) without comparing all pairs: equal hashes are grouped, and the distinct ones
    are searched by multi-index hashing, or by a blocked scan of the pair matrix where that is
    cheaper (large ``max_distance``, few hashes); see :func:`.hash_search.hamming_pairs`.

    Args:
        hashes: ``(N,)`` hashes from :func:`perceptual_hash`.
        max_distance: largest Hamming distance of a candidate pair, in ``[0, 64]``.
        images: ``N`` images (``(H, W)``, any sizes) in the order of ``hashes``; when given,
            a candidate is kept only if :func:`correlation` of its images is at least
            ``min_correlation``.
        min_correlation: threshold of the pixel check, in ``[-1, 1]``; ignored without
            ``images``.
        blank: ``N`` flags of images never paired (blank or constant ones, see
            :func:`~osteolightning.data.quality.is_blank`); with ``images``, an image constant
            at 32x32 is never paired either.

    Returns:
        ``(i, j, distance)`` with ``i < j``, sorted by ``(i, j)``.

    Raises:
        ConfigError: an argument is out of range, or ``images`` and ``hashes`` differ in
            length.

    Example:
        >>> near_duplicate_pairs([0b0, 0b11, 0b111 << 40], max_distance=2)
        [(0, 1, 2)]
    """
    if (
        isinstance(max_distance, bool)
        or not isinstance(max_distance, int | np.integer)
        or not 0 <= max_distance <= HASH_BITS
    ):
        raise ConfigError(
            f"Expected argument `max_distance` to be an integer in the [0, {HASH_BITS}] range, "
            f"but got {max_distance!r}."
        )
    if (
        isinstance(min_correlation, bool)
        or not isinstance(min_correlation, int | float | np.floating)
        or not -1.0 <= float(min_correlation) <= 1.0
    ):
        raise ConfigError(
            f"Expected argument `min_correlation` to be a float in the [-1, 1] range, but got "
            f"{min_correlation!r}."
        )
    words = _hash_array(hashes)
    if images is not None and len(images) != len(words):
        raise ConfigError(
            f"Expected argument `images` to hold one image per hash ({len(words)}), but got "
            f"{len(images)}."
        )
    if blank is not None and len(blank) != len(words):
        raise ConfigError(
            f"Expected argument `blank` to hold one flag per hash ({len(words)}), but got "
            f"{len(blank)}."
        )
    i_all, j_all, d_all = (x.tolist() for x in hamming_pairs(words, max_distance))
    pairs = list(zip(i_all, j_all, d_all, strict=True))
    if blank is not None:
        pairs = [p for p in pairs if not (blank[p[0]] or blank[p[1]])]
    if images is None:
        return pairs
    small: dict[int, np.ndarray] = {}
    for i, j, _ in pairs:
        for k in (i, j):
            if k not in small:
                small[k] = _small(images[k], f"images[{k}]")

    def constant(k: int) -> bool:
        return bool(small[k].min() == small[k].max())

    return [
        p
        for p in pairs
        if not (constant(p[0]) or constant(p[1]))
        and _pearson(small[p[0]], small[p[1]]) >= min_correlation
    ]
