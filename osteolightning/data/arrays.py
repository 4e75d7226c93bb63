"""One memory-mapped array per data set and size: every process on a node shares its pages.

A DataModule used to stack every preprocessed image into one array in RAM, in every process:
a DDP rank held ``N x S x S`` bytes (100 000 radiographs at 512 px: 26 GB per rank) and a
spawned rank received its own pickled copy. Now the images of a data set live in one ``.npy``
file in the cache folder, built once from the cache entries, and each process maps it
read-only (``np.load(mmap_mode="r")``): the operating system's page cache holds each page once
per node, a process touches only the pages of the images it reads, and the pages are clean, so
the kernel can drop them under memory pressure instead of swapping.

* :func:`build_array` writes the file atomically (a temporary file in the same folder, then
  a rename) under an advisory lock, so two processes that build one array at once produce it
  once, and a reader never sees half a file; it writes with ``pwrite``, so the builder's own
  resident memory does not grow with the array either.
* :class:`MappedImages` is the array as a dataset sees it: an ``int`` gives one image (a
  private, writable copy of its ``S x S`` bytes), a slice or an index array gives a *view*
  (no pixel is copied), ``np.asarray`` materialises it. It pickles as its path and rows, so a
  DataLoader worker or a spawned DDP rank reopens the file instead of receiving the pixels.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

try:  # POSIX advisory locks; elsewhere concurrent builders only duplicate the work
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def array_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of a complete uint8 ``.npy`` file, or ``None`` when it is missing, truncated,
    of another type or not an ``.npy`` file at all (then it is rebuilt)."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                return None
            offset = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError, SyntaxError):
        return None
    if dtype != np.uint8 or fortran or size != offset + int(np.prod(shape)):
        return None
    return tuple(int(s) for s in shape)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created when needed)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class RowWriter:
    """Writes rows of a ``.npy`` array file with ``pwrite``: thread-safe, and the pages go to
    the page cache without being mapped into the writing process (whose resident memory
    would otherwise grow by the whole array while it builds it).

    ``writer[i] = image`` writes row ``i``; ``writer[a:b] = images`` rows ``a`` to ``b - 1``.
    """

    def __init__(self, fd: int, offset: int, shape: tuple[int, ...]) -> None:
        self.fd, self.offset, self.shape = fd, offset, tuple(shape)
        self.row_bytes = int(np.prod(self.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, key: int | slice, value: np.ndarray) -> None:
        start, stop, step = (
            key.indices(len(self)) if isinstance(key, slice) else (int(key), int(key) + 1, 1)
        )
        if step != 1 or not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {key} are not a contiguous range of {len(self)}")
        data = np.ascontiguousarray(
            np.broadcast_to(np.asarray(value, dtype=np.uint8), (stop - start, *self.shape[1:]))
        )
        view, at = memoryview(data).cast("B"), self.offset + start * self.row_bytes
        while len(view):
            written = os.pwrite(self.fd, view, at)
            view, at = view[written:], at + written


def build_array(
    path: Path,
    shape: tuple[int, ...],
    fill: Callable[[RowWriter], None],
    valid: Callable[[], bool] | None = None,
) -> bool:
    """Write a uint8 ``.npy`` array of ``shape`` at ``path`` once, atomically.

    Under an exclusive lock on ``<path>.lock``: when the file is (by now) complete, nothing is
    done; else ``fill`` writes the rows through a :class:`RowWriter` into a temporary file in
    the same folder, which is flushed to disk and renamed onto ``path``. A crash leaves at most
    a temporary file (``*.tmp.npy``), never a half-written array under the final name.

    Args:
        path: the array file.
        shape: its shape.
        fill: writes the content (``writer[i] = row``; it may use threads).
        valid: whether the existing files are complete (default: the ``.npy`` has ``shape``);
            called under the lock before building.

    Returns:
        ``True`` when this call built the file, ``False`` when it was already there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    complete = valid or (lambda: array_shape(path) == tuple(shape))
    with _locked(path.with_name(path.name + ".lock")):
        if complete():
            return False
        tmp = path.with_name(f"{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npy")
        try:
            # the header, and the file sized (sparse) to hold the rows
            header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
            offset = header.offset
            del header
            fd = os.open(tmp, os.O_RDWR)
            try:
                fill(RowWriter(fd, offset, tuple(shape)))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return True


class MappedImages:
    """``(N, S, S)`` uint8 images of a ``.npy`` file, mapped read-only, as a dataset reads them.

    Args:
        path: the ``.npy`` file.
        rows: the file's rows this view shows, in order (``None``: all of them).

    Example:
        >>> images = MappedImages("arrays/3f2a.npy")  # doctest: +SKIP
        >>> train = images[np.array([4, 0, 7])]       # a view: nothing is read or copied
        >>> train[0].shape, train.shape                # row 4 of the file, a writable copy
        ((224, 224), (3, 224, 224))
    """

    def __init__(
        self,
        path: str | Path,
        rows: np.ndarray | None = None,
        _file_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.path = Path(path)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self._map: np.memmap | None = None
        # a view made in this process trusts its parent's check; a new one reads the header
        self._file_shape = _file_shape or array_shape(self.path)
        if self._file_shape is None or len(self._file_shape) != 3:
            raise ValueError(f"Expected '{self.path}' to be a complete (N, S, S) uint8 .npy file.")

    # -- the mapping (opened lazily in each process) ----------------------------------------
    @property
    def array(self) -> np.memmap:
        """The whole file, mapped read-only (opened on first use in this process)."""
        if self._map is None:
            self._map = np.load(self.path, mmap_mode="r")
        return self._map

    def __reduce__(self) -> tuple[Any, ...]:
        # a worker or spawned rank reopens the file: the pixels are never pickled
        return (MappedImages, (self.path, self.rows))

    # -- the array interface datasets use ----------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        n = self._file_shape[0] if self.rows is None else len(self.rows)
        return (n, self._file_shape[1], self._file_shape[2])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def file_rows(self) -> np.ndarray:
        """``(n,)`` the rows of the file this view shows."""
        return np.arange(self._file_shape[0]) if self.rows is None else self.rows

    def __getitem__(self, key: Any) -> Any:
        """``int``: image ``(S, S)``, a private writable copy; slice, index or boolean array:
        a :class:`MappedImages` view of those rows (nothing copied)."""
        if isinstance(key, int | np.integer):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"index {key} is out of range for {n} images")
            row = int(key) % n if self.rows is None else int(self.rows[key])
            return np.array(self.array[row])  # (S, S) uint8
        if isinstance(key, tuple):
            raise TypeError("MappedImages takes one index (images), not a tuple of indices.")
        view = MappedImages(self.path, self.file_rows()[key], self._file_shape)
        view._map = self._map
        return view

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Materialise the view: ``(n, S, S)`` in memory (a copy)."""
        out = np.array(self.array) if self.rows is None else self.array[self.rows]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"MappedImages('{self.path}', shape={self.shape})"
