"""The preprocessed-image cache: decode and resize each image once per data set and size.

A 2000-pixel JPEG takes far longer to decode than a training step takes to run; decoding it
every epoch would leave the GPU idle. Each image is therefore decoded once, letterboxed to a
square, resized, quantised to uint8 and stored under a key made of the file's content hash and
the preprocessing settings. Renaming or moving a file keeps its cache entry; editing it
invalidates it.

An entry is one file: a 48-byte header (a magic number, the SHA-1 of the source image, the
side, the source's height, width and bit depth, and a CRC-32 of the pixels) followed by the
``side x side`` uint8 pixels. An entry that is truncated, corrupt or foreign (written for
another image or size, or not written by this cache at all) is found by its size (checked
before every run) or its header and checksum (checked at every load, ~10 µs per entry), logged
naming the entry and its image, and rebuilt from the image: a damaged cache heals itself. A
cache folder that cannot be written (read-only, full) is a :class:`ConfigError` naming the
folder and ``OSTEO_CACHE_DIR``.

A file that cannot be decoded either stops the run with an error naming it
(``on_bad_image="error"``) or is left out and listed with its reason (``"skip"``); see
:meth:`PreprocessedCache.prepare`.

A DataModule reads a data set's images through :meth:`PreprocessedCache.open_array`: the
entries of the data set, in its order, copied once into one ``.npy`` array under
``s<size>-v<version>/arrays/`` (keyed by the SHA-1 of the list of content hashes), with a
``.meta.npz`` beside it (each image's :class:`ImageInfo` and perceptual hash), and mapped
read-only by every process (:mod:`osteolightning.data.arrays`): memory does not grow with the
data set, and the pages are shared between DataLoader workers and DDP ranks. The array is
derived: deleting it costs one rebuild from the entries. An array file of the wrong size
(truncated, foreign) is rebuilt; its pixels were checked (CRC-32) when it was built.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from osteolightning.data.arrays import MappedImages, RowWriter, array_shape, build_array
from osteolightning.data.io import ImageInfo, check_on_bad_image, read_image_info
from osteolightning.data.near_duplicates import perceptual_hash
from osteolightning.data.privacy import load_salt
from osteolightning.data.quality import is_blank
from osteolightning.errors import ConfigError, DataSourceError, ImageReadError, shorten
from osteolightning.utils.files import atomic_write_bytes, atomic_write_json, file_sha1
from osteolightning.utils.logging import get_logger
from osteolightning.utils.progress import progress

log = get_logger(__name__)

#: Bump when the preprocessing below changes, so stale entries are not reused.
#: 2: 8-bit images decoded in float32 (memory); minimum side 32 px.
#: 3: 16-bit images scaled by their own bit depth (sBIT or range); entries carry a header.
PREPROCESS_VERSION = 3

#: The environment variable that moves the cache (osteolightning/conf/paths: ``paths.cache_dir``).
CACHE_VARIABLE = "OSTEO_CACHE_DIR"

_MAGIC = b"OSTEOPX\x03"
# magic, source SHA-1 (raw), side, source height, width, bits, scale_bits, depth_from, CRC-32
_HEADER = struct.Struct("<8s20sIIIHBBI")
_DEPTH_FROM = ("file", "sBIT", "range", "min-max")
# errors that mean "this folder cannot take the cache", not a bug
_UNWRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def unreadable_reason(path: Path, err: OSError) -> str:
    """Why the system cannot open ``path`` (a broken link, no permission, ...)."""
    if path.is_symlink() and not path.exists():
        return f"it is a broken symbolic link (to '{os.readlink(path)}')."
    return f"the file cannot be opened ({err.strerror or err})."


def letterbox_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Pad an image to a square (centred, zero fill) and resize it, keeping its aspect ratio.

    Args:
        image: ``(H, W)`` float32 in [0, 1].
        size: side of the output.

    Returns:
        ``(size, size)`` uint8.
    """
    h, w = image.shape
    side = max(h, w)
    canvas = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = image
    # INTER_AREA averages the source pixels under each target pixel: no aliasing on downscale.
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    resized = cv2.resize(canvas, (size, size), interpolation=interpolation)
    return np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)


def cache_folder_error(root: Path, exc: OSError) -> ConfigError:
    """The error for a cache folder that cannot be written (read-only, full, no permission)."""
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    return ConfigError(
        f"Cannot write to the cache folder '{root}' ({what}"
        + (f": '{exc.filename}'" if exc.filename else "")
        + "). Preprocessed images are kept there. Make it writable or free space, or point "
        f"the environment variable {CACHE_VARIABLE} at a writable folder with space (the "
        f"cache is then ${CACHE_VARIABLE}/preprocessed), or set data.cache_dir=DIR."
    )


@dataclass
class CachedArray:
    """A data set's images as :meth:`PreprocessedCache.open_array` gives them.

    Attributes:
        images: ``(N, S, S)`` uint8, memory-mapped read-only (:class:`MappedImages`).
        infos: each image's :class:`ImageInfo` (how its file was decoded).
        hashes: each image's 64-bit :func:`perceptual_hash` (for the near-duplicate search,
            so a process need not read every image to find copies).
        blank: whether each image holds one gray level (:func:`.quality.is_blank`).
    """

    images: MappedImages
    infos: list[ImageInfo]
    hashes: list[int]
    blank: list[bool]


@dataclass
class PrepareResult:
    """What :meth:`PreprocessedCache.prepare` did.

    Attributes:
        digests: one entry per input path, in order: the content hash of a cached image, or
            ``None`` for a file that was skipped.
        skipped: ``(path, reason)`` for every skipped file, in input order; the reason is the
            decoder's message (what is wrong and what is accepted).
    """

    digests: list[str | None]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


class PreprocessedCache:
    """Content-addressed store of preprocessed images.

    Args:
        root: cache folder (created when needed).
        image_size: side of the stored square images.
        workers: decoding threads (image decoders release the GIL).

    Example:
        >>> cache = PreprocessedCache("/tmp/osteo-cache", image_size=224)  # doctest: +SKIP
        >>> arrays = cache.load([Path("a.png"), Path("b.dcm")])  # (2, 224, 224) uint8
    """

    def __init__(self, root: str | Path, image_size: int, workers: int | None = None) -> None:
        self.root = Path(root)
        self.image_size = int(image_size)
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._hash_index_path = self.root / "hash_index.json"
        #: path → why the system could not open it (filled by :meth:`hashes`)
        self.unreadable: dict[str, str] = {}
        self._entry_bytes = _HEADER.size + self.image_size * self.image_size

    def _entry(self, sha1: str) -> Path:
        return self.root / f"s{self.image_size}-v{PREPROCESS_VERSION}" / sha1[:2] / f"{sha1}.px"

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn "read-only", "no permission" and "disk full" into the cache folder's error."""
        try:
            yield
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                raise cache_folder_error(self.root, exc) from exc
            raise

    def salt(self) -> str:
        """The patient-ID salt kept in the cache folder (see :mod:`.privacy`)."""
        with self._writing():
            return load_salt(self.root)

    def hashes(self, paths: Sequence[Path]) -> list[str | None]:
        """SHA-1 of each file's content, memoised by (path, size, mtime) in the cache folder;
        ``None`` for a file the system cannot open (a broken link, no permission), whose reason
        goes to :attr:`unreadable`."""
        index: dict[str, list] = {}
        if self._hash_index_path.exists():
            try:
                index = json.loads(self._hash_index_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                index = {}  # a corrupt memo is only a memo: rebuild it
            if not isinstance(index, dict):
                index = {}
        changed = False
        result = []
        for path in paths:
            try:
                stat = path.stat()
                key = str(path.resolve())
                memo = index.get(key)
                if (
                    isinstance(memo, list)
                    and len(memo) == 3
                    and memo[:2] == [stat.st_size, stat.st_mtime_ns]
                ):
                    result.append(memo[2])
                    continue
                digest = file_sha1(path)
            except OSError as err:
                self.unreadable[str(path)] = unreadable_reason(path, err)
                result.append(None)
                continue
            index[key] = [stat.st_size, stat.st_mtime_ns, digest]
            result.append(digest)
            changed = True
        if changed:
            with self._writing():
                atomic_write_json(self._hash_index_path, index)
        return result

    def file_digests(
        self, paths: Sequence[Path], on_bad_image: str = "error"
    ) -> tuple[list[str | None], list[tuple[Path, str]]]:
        """:meth:`hashes` of files that are not decoded (a model without pixels), and the
        unreadable ones ``(path, reason)``.

        Raises:
            DataSourceError: an unreadable file under ``on_bad_image="error"``, named.
        """
        self.unreadable.clear()
        digests = self.hashes(paths)
        unread = [
            (p, self.unreadable[str(p)]) for p, d in zip(paths, digests, strict=True) if d is None
        ]
        if unread and on_bad_image == "error":
            raise DataSourceError(
                f"{len(unread)} file(s) cannot be read: "
                + "; ".join(f"'{p}': {why}" for p, why in unread[:5])
                + ". Fix them, or data.on_bad_image=skip to leave them out (skipped.csv).",
                details=[f"{p}: {why}" for p, why in unread],
            )
        return digests, unread

    # -- entries -----------------------------------------------------------------------------
    def _encode(self, sha1: str, array: np.ndarray, info: ImageInfo) -> bytes:
        pixels = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
        header = _HEADER.pack(
            _MAGIC,
            bytes.fromhex(sha1),
            self.image_size,
            info.height,
            info.width,
            info.bits,
            info.scale_bits,
            _DEPTH_FROM.index(info.depth_from),
            zlib.crc32(pixels),
        )
        return header + pixels

    def _decode(self, sha1: str, data: bytes) -> tuple[np.ndarray, ImageInfo] | str:
        """The entry's pixels and facts, or what is wrong with it."""
        if len(data) != self._entry_bytes:
            what = "empty" if not data else "truncated" if len(data) < self._entry_bytes else ""
            return (
                f"{what or 'of the wrong size'} ({len(data)} bytes, {self._entry_bytes} expected)"
            )
        magic, source, side, height, width, bits, scale_bits, depth, crc = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            return "not an entry of this cache (unknown header)"
        if source != bytes.fromhex(sha1) or side != self.image_size:
            return f"foreign (written for image {source.hex()[:12]}... at {side} px)"
        pixels = memoryview(data)[_HEADER.size :]
        if zlib.crc32(pixels) != crc or depth >= len(_DEPTH_FROM):
            return "corrupt (its checksum does not match its pixels)"
        array = np.frombuffer(pixels, dtype=np.uint8).reshape(side, side)
        return array, ImageInfo(height, width, bits, scale_bits, _DEPTH_FROM[depth])

    def _read_entry(self, sha1: str) -> tuple[np.ndarray, ImageInfo] | str:
        try:
            data = self._entry(sha1).read_bytes()
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        return self._decode(sha1, data)

    def _build(self, path: Path, sha1: str) -> tuple[np.ndarray, ImageInfo] | ImageReadError:
        """Decode, resize and store one image; return (not raise) a decoding error."""
        try:
            image, info = read_image_info(path)
        except ImageReadError as exc:
            return exc
        array = letterbox_resize(image, self.image_size)
        with self._writing():
            atomic_write_bytes(self._entry(sha1), self._encode(sha1, array, info))
        return array, info

    def _size_ok(self, sha1: str) -> bool:
        try:
            return self._entry(sha1).stat().st_size == self._entry_bytes
        except OSError:
            return False

    def prepare(self, paths: Sequence[Path], on_bad_image: str = "error") -> PrepareResult:
        """Decode every image not yet cached (in threads) and say which could not be.

        Files with the same content are decoded once. A bad file is never cached, so it is
        decoded (and fails) again on the next call. An entry of the wrong size (truncated,
        empty, foreign) is logged and rebuilt. With many images to decode a progress bar (on
        a terminal) or a few log lines show how far it is.

        Args:
            paths: the image files.
            on_bad_image: ``"error"`` raises at the first file (in input order) that cannot be
                decoded; ``"skip"`` caches the others and lists each bad one.

        Returns:
            A :class:`PrepareResult`: ``digests[i]`` is ``None`` exactly for the skipped files.

        Raises:
            ImageReadError: (``"error"``) naming the first file that cannot be decoded
                (zero-byte, truncated, not an image, too small, NaN/inf, ...).
            ConfigError: ``on_bad_image`` is not ``"error"`` or ``"skip"``, or the cache
                folder cannot be written (named, with ``OSTEO_CACHE_DIR``).
        """
        check_on_bad_image(on_bad_image)
        paths = [Path(p) for p in paths]
        digests = self.hashes(paths)
        todo: dict[str, Path] = {}  # digest → first path with that content
        damaged: list[str] = []
        for path, digest in zip(paths, digests, strict=True):
            if digest is None:
                if on_bad_image == "error":
                    raise ImageReadError(path, self.unreadable[str(path)])
                continue
            if digest not in todo and not self._size_ok(digest):
                todo[digest] = path
                if self._entry(digest).exists():
                    damaged.append(f"'{self._entry(digest)}' (image '{path}')")
        if damaged:
            log.warning(
                f"{len(damaged)} cache entries are truncated or foreign (wrong size); "
                f"rebuilding them from their images: {shorten(damaged, quote=False)}."
            )
        failed: dict[str, ImageReadError] = {}
        if todo:
            log.info(
                f"Preprocessing {len(todo)} of {len(paths)} images to {self.image_size}px "
                f"(cached in {self.root})."
            )
            with (
                ThreadPoolExecutor(self.workers) as pool,
                progress(len(todo), "Preprocessing images", log) as advance,
            ):
                built_all = pool.map(lambda item: self._build(item[1], item[0]), todo.items())
                for digest, built in zip(todo, built_all, strict=True):
                    if isinstance(built, ImageReadError):
                        failed[digest] = built
                    advance()
        result = PrepareResult(digests=list(digests))
        for i, (path, digest) in enumerate(zip(paths, digests, strict=True)):
            if digest is None:
                result.skipped.append((path, self.unreadable[str(path)]))
            elif digest in failed:
                exc = failed[digest]
                if on_bad_image == "error":
                    raise exc if Path(exc.path) == path else ImageReadError(path, exc.reason)
                result.digests[i] = None
                result.skipped.append((path, exc.reason))
        if result.skipped:
            log.warning(
                f"Skipped {len(result.skipped)} of {len(paths)} images that cannot be decoded "
                f"(on_bad_image=skip), e.g. {result.skipped[0][0]}: {result.skipped[0][1]}"
            )
        return result

    def _pixels(self, path: Path, digest: str) -> tuple[np.ndarray, ImageInfo]:
        """One entry's pixels and facts; a damaged entry is logged (naming it and its image)
        and rebuilt."""
        entry = self._read_entry(digest)
        if isinstance(entry, str):
            log.warning(
                f"Cache entry '{self._entry(digest)}' of image '{path}' is {entry}; "
                "rebuilding it from the image."
            )
            entry = self._build(Path(path), digest)
            if isinstance(entry, ImageReadError):
                raise entry
        return entry

    def load_with_info(self, paths: Sequence[Path]) -> tuple[np.ndarray, list[ImageInfo]]:
        """``(N, S, S)`` uint8 images in memory and each one's :class:`ImageInfo`,
        preprocessing any that are missing; a damaged entry is logged (naming it and its
        image) and rebuilt. (A DataModule uses :meth:`open_array`, which maps them instead.)

        Raises:
            ImageReadError: naming the first file that cannot be decoded.
            ConfigError: the cache folder cannot be written.
        """
        digests = self.prepare(paths, on_bad_image="error").digests
        out = np.empty((len(paths), self.image_size, self.image_size), dtype=np.uint8)
        infos: list[ImageInfo] = []
        for i, (path, digest) in enumerate(zip(paths, digests, strict=True)):
            out[i], info = self._pixels(Path(path), digest)
            infos.append(info)
        return out, infos

    def load(self, paths: Sequence[Path]) -> np.ndarray:
        """Return ``(N, S, S)`` uint8 images in memory (see :meth:`load_with_info`)."""
        return self.load_with_info(paths)[0]

    # -- the data set as one memory-mapped array ----------------------------------------------
    def array_path(self, digests: Sequence[str]) -> Path:
        """The array file of the images with these content hashes, in this order."""
        key = hashlib.sha1("\n".join(digests).encode()).hexdigest()
        return self.root / f"s{self.image_size}-v{PREPROCESS_VERSION}" / "arrays" / f"{key}.npy"

    def open_array(self, paths: Sequence[Path]) -> CachedArray:
        """The images of ``paths`` as one read-only memory-mapped ``(N, S, S)`` uint8 array,
        with each image's facts and perceptual hash; built from the entries on first use
        (preprocessing any image not cached yet), once, atomically, also when several
        processes ask at the same time (see :func:`~osteolightning.data.arrays.build_array`).

        Raises:
            ImageReadError: naming the first file that cannot be decoded.
            ConfigError: the cache folder cannot be written.
        """
        paths = [Path(p) for p in paths]
        digests = self.prepare(paths, on_bad_image="error").digests
        path = self.array_path(digests)
        meta_path = path.with_suffix(".meta.npz")
        shape = (len(paths), self.image_size, self.image_size)
        meta = self._read_meta(meta_path, len(paths))
        if meta is None or not _same_shape(path, shape):
            if path.exists():
                log.warning(
                    f"The cache array '{path}' is truncated, foreign or lacks its facts "
                    f"('{meta_path.name}'); rebuilding it from the cache entries."
                )
            with self._writing():

                def fill(out: RowWriter) -> None:
                    self._fill_array(out, paths, digests, meta_path)

                def valid() -> bool:
                    meta = self._read_meta(meta_path, len(paths))
                    return meta is not None and _same_shape(path, shape)

                if build_array(path, shape, fill, valid) and path.exists():
                    log.info(f"Built the data set's image array {path} ({len(paths)} images).")
            meta = self._read_meta(meta_path, len(paths))
            if meta is None:  # pragma: no cover - another process removed it meanwhile
                raise ConfigError(f"The cache array '{path}' vanished while it was opened.")
        infos = [
            ImageInfo(int(h), int(w), int(b), int(sb), _DEPTH_FROM[int(d)])
            for h, w, b, sb, d in zip(*(meta[k] for k in _META_INFO), strict=True)
        ]
        hashes, blank = [int(h) for h in meta["phash"]], [bool(b) for b in meta["blank"]]
        return CachedArray(MappedImages(path), infos, hashes, blank)

    def _fill_array(
        self, out: RowWriter, paths: list[Path], digests: list[str], meta_path: Path
    ) -> None:
        """Copy every entry (checked, healed) into ``out``; write the facts to ``meta_path``."""
        n = len(paths)
        meta = {k: np.zeros(n, np.int64) for k in _META_INFO}
        phash, blank = np.zeros(n, np.uint64), np.zeros(n, np.bool_)

        def one(i: int) -> None:
            pixels, info = self._pixels(paths[i], digests[i])
            out[i] = pixels
            phash[i], blank[i] = perceptual_hash(pixels), is_blank(pixels, info)
            for k, v in zip(_META_INFO, _info_values(info), strict=True):
                meta[k][i] = v

        with (
            ThreadPoolExecutor(self.workers) as pool,
            progress(n, "Building the image array", log) as advance,
        ):
            for _ in pool.map(one, range(n)):
                advance()
        buffer = io.BytesIO()
        np.savez(buffer, phash=phash, blank=blank, **meta)
        atomic_write_bytes(meta_path, buffer.getvalue())

    @staticmethod
    def _read_meta(path: Path, n: int) -> dict[str, np.ndarray] | None:
        """The facts of an array's images, or ``None`` when missing or not for ``n`` images."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = {k: data[k] for k in (*_META_INFO, "phash", "blank")}
        except (OSError, ValueError, KeyError, EOFError, zlib.error):
            return None
        return meta if all(len(v) == n for v in meta.values()) else None


#: the :class:`ImageInfo` fields kept in an array's ``.meta.npz`` (depth: index in _DEPTH_FROM)
_META_INFO = ("height", "width", "bits", "scale_bits", "depth")


def _info_values(info: ImageInfo) -> tuple[int, ...]:
    return (info.height, info.width, info.bits, info.scale_bits, _DEPTH_FROM.index(info.depth_from))


def _same_shape(path: Path, shape: tuple[int, ...]) -> bool:
    return array_shape(path) == tuple(shape)
