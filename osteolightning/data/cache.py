"""The preprocessed-image cache: decode and resize each image once per data set and size.

A 2000-pixel JPEG takes far longer to decode than a training step takes to run; decoding it
every epoch would leave the GPU idle. Each image is therefore decoded once, letterboxed to a
square, resized, quantised to uint8 and stored as ``.npy`` under a key made of the file's
content hash and the preprocessing settings. Renaming or moving a file keeps its cache entry;
editing it invalidates it.

A file that cannot be decoded either stops the run with an error naming it
(``on_bad_image="error"``) or is left out and listed with its reason (``"skip"``); see
:meth:`PreprocessedCache.prepare`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from osteolightning.data.io import check_on_bad_image, read_image
from osteolightning.errors import ImageReadError
from osteolightning.utils.files import atomic_write_bytes, atomic_write_json, file_sha1
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

#: Bump when the preprocessing below changes, so stale entries are not reused.
PREPROCESS_VERSION = 2  # 2: 8-bit images decoded in float32 (memory); minimum side 32 px


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

    def _entry(self, sha1: str) -> Path:
        return self.root / f"s{self.image_size}-v{PREPROCESS_VERSION}" / sha1[:2] / f"{sha1}.npy"

    def hashes(self, paths: Sequence[Path]) -> list[str | None]:
        """SHA-1 of each file's content, memoised by (path, size, mtime) in the cache folder;
        ``None`` for a file the system cannot open (a broken link, no permission), whose reason
        goes to :attr:`unreadable`."""
        index: dict[str, list] = {}
        if self._hash_index_path.exists():
            try:
                index = json.loads(self._hash_index_path.read_text())
            except (OSError, json.JSONDecodeError):
                index = {}  # a corrupt memo is only a memo: rebuild it
        changed = False
        result = []
        for path in paths:
            try:
                stat = path.stat()
                key = str(path.resolve())
                memo = index.get(key)
                if memo and memo[0] == stat.st_size and memo[1] == stat.st_mtime_ns:
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
            atomic_write_json(self._hash_index_path, index)
        return result

    def _build(self, path: Path, sha1: str) -> ImageReadError | None:
        """Decode, resize and store one image; return (not raise) a decoding error."""
        try:
            array = letterbox_resize(read_image(path), self.image_size)
        except ImageReadError as exc:
            return exc
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        atomic_write_bytes(self._entry(sha1), buffer.getvalue())
        return None

    def prepare(self, paths: Sequence[Path], on_bad_image: str = "error") -> PrepareResult:
        """Decode every image not yet cached (in threads) and say which could not be.

        Files with the same content are decoded once. A bad file is never cached, so it is
        decoded (and fails) again on the next call.

        Args:
            paths: the image files.
            on_bad_image: ``"error"`` raises at the first file (in input order) that cannot be
                decoded; ``"skip"`` caches the others and lists each bad one.

        Returns:
            A :class:`PrepareResult`: ``digests[i]`` is ``None`` exactly for the skipped files.

        Raises:
            ImageReadError: (``"error"``) naming the first file that cannot be decoded
                (zero-byte, truncated, not an image, too small, NaN/inf, ...).
            ConfigError: ``on_bad_image`` is not ``"error"`` or ``"skip"``.
        """
        check_on_bad_image(on_bad_image)
        paths = [Path(p) for p in paths]
        digests = self.hashes(paths)
        todo: dict[str, Path] = {}  # digest → first path with that content
        for path, digest in zip(paths, digests, strict=True):
            if digest is None:
                if on_bad_image == "error":
                    raise ImageReadError(path, self.unreadable[str(path)])
                continue
            if digest not in todo and not self._entry(digest).exists():
                todo[digest] = path
        failed: dict[str, ImageReadError] = {}
        if todo:
            log.info(
                f"Preprocessing {len(todo)} of {len(paths)} images to {self.image_size}px "
                f"(cached in {self.root})."
            )
            with ThreadPoolExecutor(self.workers) as pool:
                errors = pool.map(lambda item: self._build(item[1], item[0]), todo.items())
                failed = {d: e for d, e in zip(todo, errors, strict=True) if e is not None}
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

    def load(self, paths: Sequence[Path]) -> np.ndarray:
        """Return ``(N, S, S)`` uint8 images, preprocessing any that are missing.

        Raises:
            ImageReadError: naming the first file that cannot be decoded.
        """
        digests = self.prepare(paths, on_bad_image="error").digests
        out = np.empty((len(paths), self.image_size, self.image_size), dtype=np.uint8)
        for i, digest in enumerate(digests):
            out[i] = np.load(self._entry(digest), allow_pickle=False)
        return out
