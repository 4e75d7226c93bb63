"""Numeric columns of the samples: a regression target (``t_score``, ``bmd``) and clinical
covariates (``age``, ``sex``, ``bmi``, ...), as float arrays with NaN for "unknown".

A manifest's cells reach a :class:`~osteolightning.data.sample.Sample` as strings
(``Sample.extra``; the T-score already as a number). Here they become numbers: an empty cell or
``NA`` / ``NaN`` / ``null`` means unknown (NaN, counted by the callers); anything else that is
not a finite number (``abc``, ``inf``) is an error naming the file and line of every bad row.
The ``sex`` column is coded ``1`` for female (``F``, ``female``, ``W``, ``woman``) and ``0``
for male (``M``, ``male``, ``man``), case-insensitively; a column that is asked for and that the
data does not have is an error naming the columns it has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from osteolightning.data.sample import Sample
from osteolightning.data.sources import MAX_REPORTED, ManifestSource
from osteolightning.data.splits import SPLIT_NAMES
from osteolightning.errors import DataSourceError

#: the column coded as 1 (female) / 0 (male) instead of read as a number
SEX_COLUMN = "sex"
SEX_CODES: dict[str, float] = {
    "f": 1.0,
    "female": 1.0,
    "w": 1.0,
    "woman": 1.0,
    "m": 0.0,
    "male": 0.0,
    "man": 0.0,
}
#: cells that mean "unknown"
MISSING_VALUES = ManifestSource.MISSING_VALUES


def available_columns(samples: Sequence[Sample]) -> list[str]:
    """The value columns the samples carry: ``t_score`` when any sample has one, then every
    further manifest column (``Sample.extra``), sorted."""
    names = {key for s in samples for key in s.extra}
    if any(s.t_score is not None for s in samples):
        names.add("t_score")
    return sorted(names)


def _cell(sample: Sample, column: str) -> str | float | None:
    if column == "t_score":
        return sample.t_score
    return sample.extra.get(column)


def parse_cell(cell: str | float | None, column: str) -> float:
    """One cell as a float (NaN: unknown); ValueError with the reason when it is bad."""
    if cell is None:
        return math.nan
    if isinstance(cell, float):
        return cell
    text = cell.strip()
    if text.lower() in MISSING_VALUES:
        return math.nan
    if column == SEX_COLUMN:
        code = SEX_CODES.get(text.lower())
        if code is None:
            raise ValueError(
                f"{column} '{cell}' is not one of F, female, W, woman, M, male, man "
                "(any case; empty if unknown)"
            )
        return code
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{column} '{cell}' is not a finite number (empty or NA if unknown)")
    return value


def column_values(samples: Sequence[Sample], columns: Sequence[str], source: str) -> np.ndarray:
    """The values of ``columns`` for every sample.

    Args:
        samples: ``N`` samples.
        columns: ``P`` column names (normalised as the manifest's header: ``t_score``, ``bmd``,
            ``age``, ``sex``, ``bmi``, ...).
        source: the data source's description, for messages.

    Returns:
        ``(N, P)`` float64, NaN where a value is unknown.

    Raises:
        DataSourceError: a column no sample has (the message lists the columns the data has),
            or cells that are not numbers (each bad row named by file and line, up to ten).

    Example:
        >>> s = Sample(path=Path("a.png"), extra={"age": "61", "sex": "F"})  # doctest: +SKIP
        >>> column_values([s], ["age", "sex"], "demo").tolist()  # doctest: +SKIP
        [[61.0, 1.0]]
    """
    have = available_columns(samples)
    absent = [c for c in columns if c not in have]
    if absent:
        raise DataSourceError(
            f"Column(s) {', '.join(absent)} were asked for, but {source} has no such column; "
            f"its value columns are: {', '.join(have) or 'none'}. Add the column to the "
            f"manifest, or ask for one of these."
        )
    values = np.full((len(samples), len(columns)), np.nan)
    errors: list[str] = []
    for i, sample in enumerate(samples):
        for j, column in enumerate(columns):
            try:
                values[i, j] = parse_cell(_cell(sample, column), column)
            except ValueError as err:
                errors.append(f"{sample.where or sample.path}: {err}")
    if errors:
        shown = "\n  ".join(errors[:MAX_REPORTED])
        more = (
            f"\n  ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        )
        raise DataSourceError(f"{len(errors)} bad value(s) in {source}:\n  {shown}{more}")
    return values


class ColumnValues:
    """The target and covariate columns of a DataModule's samples (a mixin of
    :class:`~osteolightning.data.datamodule.KneeDataModule`, whose ``target``, ``covariates``,
    ``samples``, ``source`` and ``datasets`` it reads)."""

    target: str | None
    covariates: list[str]
    samples: list[Sample]
    source: Any
    datasets: dict[str, Any]
    _columns: np.ndarray | None

    def values(self) -> np.ndarray:
        """``(N, T + P)`` float64 values of :attr:`samples`: the target column (``T = 1`` when
        one is set) then the covariates; NaN where unknown. Parsed once (a bad cell or a
        missing covariate column raises, see :func:`~osteolightning.data.columns.column_values`).
        """
        if self._columns is None or len(self._columns) != len(self.samples):
            t = int(bool(self.target))
            values = np.full((len(self.samples), t + len(self.covariates)), np.nan)
            where = self.source.describe()
            # an absent target column is all-unknown here; the model that needs it says so
            if self.target and self.target in available_columns(self.samples):
                values[:, :1] = column_values(self.samples, [self.target], where)
            if self.covariates:
                values[:, t:] = column_values(self.samples, self.covariates, where)
            self._columns = values
        return self._columns

    def split_values(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """The target ``(n,)`` and covariates ``(n, P)`` of one split's images (NaN unknown;
        the target all NaN when none is set)."""
        dataset = self.datasets[split]
        n = len(dataset)
        targets = dataset.targets if dataset.targets is not None else np.full(n, np.nan)
        covariates = dataset.covariates if dataset.covariates is not None else np.zeros((n, 0))
        return np.asarray(targets, dtype=np.float64), np.asarray(covariates, dtype=np.float64)

    def require_target(self) -> None:
        """Raise when the target column is not in the data (a model needs it).

        Raises:
            DataSourceError: no target set, or a column the source does not have (the message
                lists the columns it has).
        """
        have = available_columns(self.samples)
        if not self.target or self.target not in have:
            raise DataSourceError(
                f"The model regresses target column `{self.target}`, but "
                f"{self.source.describe()} has no such column; its value columns are: "
                f"{', '.join(have) or 'none'}. Choose one of them (model.target=...) or add the "
                "column to the manifest."
            )

    def _values_summary(self) -> list[str]:
        """How many images of each split lack the target and each covariate."""
        if not (self.target or self.covariates) or not self.datasets:
            return []
        names = ([self.target] if self.target else []) + self.covariates
        parts = []
        for split in SPLIT_NAMES:
            targets, covariates = self.split_values(split)
            values = np.column_stack([targets, covariates]) if self.target else covariates
            unknown = np.isnan(values).sum(axis=0)
            parts.append(
                f"{split} "
                + ", ".join(f"{n}={int(u)}" for n, u in zip(names, unknown, strict=True))
            )
        return [f"  unknown values (left out of the regression loss / imputed): {'; '.join(parts)}"]
