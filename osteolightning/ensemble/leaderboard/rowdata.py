"""Each leaderboard row's test predictions per (seed, fold), and how two rows pair up.

A configuration row's predictions are its finished jobs' ``predictions.csv``; an ensemble row's
are its fusions per (seed, fold) (:attr:`Leaderboard.fused`). Two rows are compared on the
*rows both were tested on*: a test row is keyed by ``(seed, fold, image path)``, so seed ``s``
fold ``f`` of one configuration meets seed ``s`` fold ``f`` of the other, and an image tested
under several seeds is one cluster of the paired bootstrap.

Rows tested on different images (a failed job, a seed one row lacks) are compared on the common
rows and the pair says so (``restricted``, with the counts and examples of the rows left out);
rows with no common test row, or whose labels disagree on one, are not compared and the reason
names them and the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from osteolightning.ensemble.leaderboard.board import Leaderboard
from osteolightning.ensemble.members import align
from osteolightning.errors import DataSourceError
from osteolightning.metrics.report import metric_table
from osteolightning.runs import rundir
from osteolightning.runs.rundir import has_probabilities, read_image_scores, read_predictions

Unit = tuple[int | None, int | None]
Key = tuple[int | None, int | None, str]
#: Examples of differing images named in a message.
SHOWN_IMAGES = 3


@dataclass
class UnitRows:
    """One (seed, fold) of a row: its test images and what it predicted.

    Attributes:
        paths: ``N`` image paths.
        labels: ``(N,)`` true classes (classification), else ``None``.
        values: ``(N, K)`` probabilities (classification) or ``(N,)`` per-image Dice, NaN
            where undefined (segmentation).
        job: a job directory of this (seed, fold) (its ``splits.csv`` gives the split sizes).
    """

    paths: list[str]
    labels: np.ndarray | None
    values: np.ndarray
    job: Path | None


@dataclass
class RowData:
    """A leaderboard row's test predictions: (seed, fold) → :class:`UnitRows`."""

    name: str
    kind: str
    units: dict[Unit, UnitRows] = field(default_factory=dict)

    def pooled(self) -> tuple[list[str], np.ndarray | None, np.ndarray]:
        """Every unit's rows stacked: ``(paths, labels, values)``."""
        parts = list(self.units.values())
        labels = [u.labels for u in parts]
        return (
            [p for u in parts for p in u.paths],
            np.concatenate(labels) if parts and labels[0] is not None else None,
            np.concatenate([u.values for u in parts]),
        )


def unit_order(unit: Unit) -> tuple:
    """Sort key of a (seed, fold), ``None`` last."""
    return (unit[0] is None, unit[0] or 0, unit[1] is None, unit[1] or 0)


def _job_rows(job: Path, class_names: list[str] | None) -> UnitRows:
    file = job / rundir.PREDICTIONS
    if class_names is not None and has_probabilities(file):
        paths, labels, probs = align([read_predictions(file)], class_names)
        return UnitRows(list(paths), labels, probs[0], job)
    paths, scores = read_image_scores(file, "dice")
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(scores)
        count = finite.sum(axis=1)
        mean = np.where(finite, scores, 0.0).sum(axis=1) / np.maximum(count, 1)
    return UnitRows(paths, None, np.where(count > 0, mean, np.nan), job)


def row_data(board: Leaderboard) -> tuple[dict[str, RowData], list[str]]:
    """The test predictions of every row that has them, and notes on what was left out.

    A segmentation row's per-image value is its Dice averaged over the foreground classes
    scored on that image (classes absent from truth and prediction left out).

    Returns:
        ``(row name → RowData, notes)``, rows in leaderboard order.
    """
    out: dict[str, RowData] = {}
    notes: list[str] = []
    for row in board.rows:
        data = RowData(row["name"], row["kind"])
        if row["kind"] == "ensemble":
            members = [board.jobs.get(m, []) for m in row["members"] or []]
            for unit, fused in board.fused.get(row["method"], []):
                job = next((j.path for j in members[0] if (j.seed, j.fold) == unit), None)
                data.units[unit] = UnitRows(fused.paths, fused.labels, fused.probs, job)
        for job in board.jobs.get(row["name"], []) if row["kind"] != "ensemble" else []:
            unit = (job.seed, job.fold)
            if unit in data.units:
                notes.append(
                    f"{row['name']!r}: a second finished job at (seed, fold) {unit} "
                    f"('{job.path}') is left out of the comparisons."
                )
                continue
            try:
                data.units[unit] = _job_rows(job.path, board.class_names)
            except (OSError, DataSourceError) as err:
                notes.append(f"{row['name']!r}: job '{job.path}' left out ({err}).")
        if data.units:
            out[row["name"]] = data
        else:
            notes.append(f"{row['name']!r} has no test predictions: not compared.")
    return out, notes


def unit_metric(
    rows: UnitRows, metric: str, class_names: Sequence[str] | None, index: np.ndarray | None = None
) -> float:
    """``metric`` (``test/`` prefix optional) of one unit's rows (or the rows ``index``); NaN
    where undefined (an absent class's AUROC, no scored image)."""
    name = metric.removeprefix("test/")
    values = rows.values if index is None else rows.values[index]
    if rows.labels is None:
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    labels = rows.labels if index is None else rows.labels[index]
    return float(metric_table(labels[None], values[None], class_names)[name][0])


def split_sizes(job: Path | None) -> tuple[int, int] | None:
    """``(n_train, n_test)`` from a job's ``splits.csv``; ``None`` without one."""
    if job is None or rundir.find_splits(job) is None:
        return None
    try:
        _, rows = rundir.read_splits(job)
    except DataSourceError:
        return None
    splits = [r["split"] for r in rows]
    return splits.count("train"), splits.count("test")


@dataclass
class Pair:
    """Two rows' common test rows, in A's order.

    Attributes:
        keys: the common ``(seed, fold, path)`` keys.
        labels: ``(N,)`` true classes (classification), else ``None``.
        a, b: ``(N, K)`` probabilities or ``(N,)`` per-image scores of each row.
        only_a, only_b: keys one row was tested on and the other was not.
    """

    keys: list[Key]
    labels: np.ndarray | None
    a: np.ndarray
    b: np.ndarray
    only_a: list[Key]
    only_b: list[Key]

    @property
    def paths(self) -> list[str]:
        return [k[2] for k in self.keys]

    def units(self) -> dict[Unit, np.ndarray]:
        """(seed, fold) → indices of its common rows."""
        out: dict[Unit, list[int]] = {}
        for i, (seed, fold, _) in enumerate(self.keys):
            out.setdefault((seed, fold), []).append(i)
        return {u: np.asarray(v) for u, v in sorted(out.items(), key=lambda x: unit_order(x[0]))}

    def restriction(self, name_a: str, name_b: str) -> str | None:
        """What the comparison leaves out, or ``None`` when both rows have the same test rows."""
        if not self.only_a and not self.only_b:
            return None
        parts = []
        for name, keys in ((name_a, self.only_a), (name_b, self.only_b)):
            if keys:
                parts.append(f"{len(keys)} of {name!r} ({describe_keys(keys)})")
        return (
            f"compared on the {len(self.keys)} test rows ({len(set(self.paths))} images) both "
            f"were tested on; left out: {' and '.join(parts)}"
        )


def describe_keys(keys: Sequence[Key]) -> str:
    """A few keys as ``image (seed s, fold f)``."""
    shown = [f"{Path(p).name} (seed {s}, fold {f})" for s, f, p in keys[:SHOWN_IMAGES]]
    return ", ".join(shown) + (", ..." if len(keys) > SHOWN_IMAGES else "")


def _index(data: RowData) -> dict[Key, tuple[UnitRows, int]]:
    return {
        (unit[0], unit[1], path): (rows, i)
        for unit, rows in data.units.items()
        for i, path in enumerate(rows.paths)
    }


def pair_rows(a: RowData, b: RowData) -> Pair:
    """The common test rows of ``a`` and ``b``.

    Raises:
        DataSourceError: no common test row (naming both rows and images each was tested on),
            or a common image whose label differs between the rows.
    """
    ia, ib = _index(a), _index(b)
    keys = [k for k in ia if k in ib]
    only_a = [k for k in ia if k not in ib]
    only_b = [k for k in ib if k not in ia]
    if not keys:
        raise DataSourceError(
            f"{a.name!r} and {b.name!r} were tested on different images: no (seed, fold, image) "
            f"in common; {a.name!r} has {describe_keys(only_a)}, {b.name!r} has "
            f"{describe_keys(only_b)}."
        )
    rows_a = [ia[k] for k in keys]
    rows_b = [ib[k] for k in keys]
    va = np.stack([r.values[i] for r, i in rows_a])
    vb = np.stack([r.values[i] for r, i in rows_b])
    labels = None
    if rows_a[0][0].labels is not None:
        labels = np.array([r.labels[i] for r, i in rows_a])
        other = np.array([r.labels[i] for r, i in rows_b])
        if (bad := np.flatnonzero(labels != other)).size:
            raise DataSourceError(
                f"{a.name!r} and {b.name!r} give different labels to the same images: "
                f"{describe_keys([keys[i] for i in bad])}; compare rows of one data set."
            )
    return Pair(keys, labels, va, vb, only_a, only_b)


def per_image(pair: Pair) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """One row per image: ``(paths, labels, probs_a, probs_b)`` with each image's probabilities
    averaged over the seeds it was tested under (DeLong's and McNemar's tests assume
    independent rows)."""
    paths = pair.paths
    unique, inverse = np.unique(np.asarray(paths), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(unique))[:, None]

    def mean(values: np.ndarray) -> np.ndarray:
        out = np.zeros((len(unique), values.shape[1]))
        np.add.at(out, inverse, values)
        return out / counts

    labels = np.zeros(len(unique), dtype=np.int64)
    labels[inverse] = pair.labels
    return list(unique), labels, mean(pair.a), mean(pair.b)
