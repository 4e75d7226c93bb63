"""Features of an image computed once: a second run, or a sweep over the head's regularisation,
embeds nothing again.

An entry is the feature vector of one image under one embedder: stored as
``<root>/<embedder key>/<aa>/<image key>.npz`` holding the vector and both keys. The image key
comes from the data (the file's content hash, the preprocessing and any mask applied; see
:class:`~osteolightning.data.datamodule.ArrayDataset`), the embedder key from the embedder
(backbone, weights, views; see :mod:`~osteolightning.models.components.features`). An entry
that cannot be read, or was written for another embedder or image, is computed again, written
anew and logged: it is never reused.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from osteolightning.utils.files import atomic_write_bytes
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


class FeatureCache:
    """Content-addressed feature vectors.

    Args:
        root: the folder (created when needed); ``None`` keeps nothing (every call computes).

    Attributes:
        hits: vectors read back since creation.
        misses: vectors that had to be computed (absent or rebuilt entries).
        rebuilt: entries found unusable and computed again.
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root else None
        self.hits = self.misses = self.rebuilt = 0

    def _path(self, embedder: str, image: str) -> Path:
        assert self.root is not None
        return self.root / embedder / image[:2] / f"{image}.npz"

    def get(self, embedder: str, images: Sequence[str]) -> list[np.ndarray | None]:
        """The stored vector of each image key, ``None`` where it must be computed."""
        out: list[np.ndarray | None] = []
        for image in images:
            vector = self._read(embedder, image) if self.root is not None else None
            out.append(vector)
            if vector is None:
                self.misses += 1
            else:
                self.hits += 1
        return out

    def _read(self, embedder: str, image: str) -> np.ndarray | None:
        path = self._path(embedder, image)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                keys = (str(entry["embedder"]), str(entry["image"]))
                vector = entry["features"]
            if keys != (embedder, image) or vector.ndim != 1 or not np.isfinite(vector).all():
                raise ValueError(f"written for {keys}, shape {vector.shape}")
        except Exception as err:  # noqa: BLE001 - any unreadable or foreign entry is rebuilt
            log.warning(f"Feature cache entry {path} is unusable ({err}); computing it again.")
            self.rebuilt += 1
            return None
        return vector

    def put(self, embedder: str, images: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``(N, D)`` vectors under their image keys (atomic writes)."""
        if self.root is None:
            return
        for image, vector in zip(images, np.asarray(vectors, dtype=np.float32), strict=True):
            buffer = io.BytesIO()
            np.savez(buffer, features=vector, embedder=np.str_(embedder), image=np.str_(image))
            atomic_write_bytes(self._path(embedder, image), buffer.getvalue())
