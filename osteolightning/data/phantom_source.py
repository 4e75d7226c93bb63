"""The built-in data source: the synthetic knee phantom, generated on first use and cached."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from osteolightning.data.phantom_files import ensure_phantom
from osteolightning.data.sample import Sample
from osteolightning.data.sources import ManifestSource


class PhantomSource:
    """Synthetic knee radiographs with known T-score, class and bone masks.

    The set is generated once into ``root`` (outside git) and reused by every later run with
    the same parameters.

    Args:
        root: folder for this phantom set, e.g. ``.cache/phantom/n800-s0-256``.
        n: number of knee images.
        seed: generator seed; the same seed gives byte-identical images.
        size: side of the generated images in pixels.
        bit_depth: 8 or 16.
        workers: generator processes (``None``: one per CPU).
    """

    def __init__(
        self,
        root: str | Path,
        n: int = 800,
        seed: int = 0,
        size: int = 256,
        bit_depth: int = 8,
        workers: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.n, self.seed, self.size, self.bit_depth, self.workers = (
            n,
            seed,
            size,
            bit_depth,
            workers,
        )

    def samples(self, class_names: Sequence[str]) -> list[Sample]:
        """Generate the set if needed and return its samples."""
        manifest = ensure_phantom(
            self.root,
            n=self.n,
            seed=self.seed,
            size=self.size,
            bit_depth=self.bit_depth,
            workers=self.workers,
        )
        return ManifestSource(manifest).samples(class_names)

    def describe(self) -> str:
        return f"knee phantom (n={self.n}, seed={self.seed}, {self.size}px) in {self.root}"
