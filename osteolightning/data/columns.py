"""Value columns of the samples: a regression target (``t_score``, ``bmd``) and clinical
covariates (``age``, ``sex``, ``bmi``, yes/no risk factors, categories), as float arrays with
NaN for "unknown".

Clinical tables come with numbers, yes/no answers and text categories. A
:data:`Coding` says how each covariate becomes numbers: ``"number"``; ``"binary"`` (``yes`` /
``no``, ``y`` / ``n``, ``true`` / ``false`` → 1 / 0); ``"sex"`` (below); or a list of category
levels, one-hot encoded (one column ``name=level`` per level; a level the training data did
not have is unknown). :func:`infer_coding` reads it from the training split's cells; the model
keeps it in its checkpoint, so ``osteo-eval`` and ``osteo-predict`` encode new rows the same
way. Columns whose names say what they measure (``age``, ``weight_kg``, ``bmi``, ``t_score``,
...) are checked against plausible ranges (:data:`PLAUSIBLE`): an impossible value (a negative
age) is an error naming its file and line, not a number a model learns from.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from osteolightning.data.sample import Sample
from osteolightning.data.sources import MAX_REPORTED, ManifestSource
from osteolightning.data.splits import SPLIT_NAMES, TRAIN
from osteolightning.errors import ConfigError, DataSourceError, shorten
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)

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
#: yes/no answers, case-insensitively
BINARY_CODES: dict[str, float] = {
    "yes": 1.0, "no": 0.0, "y": 1.0, "n": 0.0, "true": 1.0, "false": 0.0,
}  # fmt: skip
#: coded kinds: their codes and what they accept, for messages
CODED: dict[str, tuple[dict[str, float], str]] = {
    "binary": (BINARY_CODES, "a yes/no answer (yes, no, y, n, true, false)"),
    "sex": (SEX_CODES, "one of F, female, W, woman, M, male, man"),
}
#: more distinct text values than this in a column: free text, not a category
MAX_LEVELS = 30
#: plausible ranges ``(low, high)`` of columns whose names say what they measure; a value
#: outside is an error (a unit or typing mistake, or a code for "unknown")
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "age": (0.0, 120.0),
    "height_m": (0.4, 2.5),
    "height_cm": (40.0, 250.0),
    "weight_kg": (1.0, 400.0),
    "bmi": (8.0, 100.0),
    "t_score": (-10.0, 10.0),
    "z_score": (-10.0, 10.0),
    "bmd": (0.01, 3.0),
    "menopause_age": (10.0, 70.0),
    "pregnancies": (0.0, 30.0),
    "walking_km": (0.0, 200.0),
}
#: how a column's cells become numbers: "number", "binary", "sex", or category levels
Coding = dict[str, str | list[str]]
#: columns that are never covariates under ``covariates=all``: identifiers and file names
NOT_COVARIATES = frozenset({"image", "label", "mask", "patient_id", "id", "path", "file"})


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


def _missing(cell: str | float | None) -> bool:
    if cell is None:
        return True
    if isinstance(cell, float):
        return math.isnan(cell)
    return cell.strip().lower() in MISSING_VALUES


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def infer_coding(samples: Sequence[Sample], columns: Sequence[str], source: str) -> Coding:
    """How each of ``columns`` becomes numbers, from the cells of ``samples`` (the training
    split's): ``sex`` is ``"sex"``; a column with any number is ``"number"`` (its other cells
    are errors, see :func:`column_values`); one whose every known cell is a yes/no answer is
    ``"binary"``; any other text column is a category with its sorted levels (lower case).

    Raises:
        DataSourceError: a text column with more than :data:`MAX_LEVELS` distinct values (free
            text: leave it out of the covariates).
    """
    coding: Coding = {}
    for column in columns:
        cells = [_cell(s, column) for s in samples]
        known = [c.strip() if isinstance(c, str) else c for c in cells if not _missing(c)]
        if column == SEX_COLUMN:
            coding[column] = "sex"
        elif not known or any(isinstance(c, float) or _is_number(c) for c in known):
            coding[column] = "number"
        elif all(c.lower() in BINARY_CODES for c in known):
            coding[column] = "binary"
        else:
            levels = sorted({c.lower() for c in known})
            if len(levels) > MAX_LEVELS:
                raise DataSourceError(
                    f"Column `{column}` of {source} holds {len(levels)} distinct text values "
                    f"({shorten(levels, 3)}): it is neither a number, a yes/no answer nor a "
                    f"category of at most {MAX_LEVELS} levels. Leave it out of the covariates "
                    "(list the ones to use: model.covariates=[age,sex,...]).",
                    details=levels,
                )
            coding[column] = levels
    return coding


def plain_coding(coding: Mapping[str, Any] | None) -> Coding:
    """A coding as plain Python types (a config's or checkpoint's lists become lists)."""
    return {
        str(k): str(v) if isinstance(v, str) else [str(level) for level in v]
        for k, v in (coding or {}).items()
    }


def coded_names(columns: Sequence[str], coding: Coding) -> list[str]:
    """The encoded columns' names: a category's one-hot columns are ``name=level``."""
    names = []
    for column in columns:
        kind = coding.get(column, "number")
        names += [f"{column}={level}" for level in kind] if isinstance(kind, list) else [column]
    return names


def covariate_candidates(samples: Sequence[Sample], exclude: Sequence[str]) -> list[str]:
    """What ``covariates=all`` means: every value column but ``exclude`` (the target),
    identifiers (``*_id``, :data:`NOT_COVARIATES`) and the T-score (the label's source), in
    the manifest's order."""
    order: dict[str, None] = {}
    for s in samples:
        order.update(dict.fromkeys(s.extra))
    skip = {*exclude, "t_score", *NOT_COVARIATES}
    return [c for c in order if c not in skip and not c.endswith("_id")]


def parse_cell(cell: str | float | None, column: str, kind: str = "number") -> float:
    """One cell as a float (NaN: unknown); ValueError with the reason when it is bad.

    Args:
        cell: the manifest's text (or the T-score, already a number).
        column: the column's name (``sex`` has its own codes).
        kind: ``"number"`` or ``"binary"`` (a yes/no answer); ``sex`` is always coded.
    """
    if _missing(cell):
        return math.nan
    if isinstance(cell, float):
        return _plausible(cell, column)
    text = cell.strip()
    kind = "sex" if column == SEX_COLUMN else kind
    if kind in CODED:
        codes, accepted = CODED[kind]
        code = codes.get(text.lower())
        if code is None:
            raise ValueError(f"{column} '{cell}' is not {accepted} (any case; empty if unknown)")
        return code
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{column} '{cell}' is not a finite number (empty or NA if unknown)")
    return _plausible(value, column)


def _plausible(value: float, column: str) -> float:
    bounds = PLAUSIBLE.get(column)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise ValueError(
            f"{column} {value:g} is not a plausible value (expected {bounds[0]:g} to "
            f"{bounds[1]:g}; leave the cell empty if unknown)"
        )
    return value


def encode_row(cells: Mapping[str, str], columns: Sequence[str], coding: Coding) -> list[float]:
    """One manifest row's encoded covariates (:func:`coded_names` order); ValueError names a
    bad cell."""
    return [v for c in columns for v in _encode_cell(cells.get(c), c, coding.get(c, "number"))]


def _encode_cell(cell: str | float | None, column: str, kind: str | list[str]) -> list[float]:
    """A cell's encoded values: one number, or a category's one-hot row (all NaN: unknown or
    a level the coding does not have)."""
    if not isinstance(kind, list):
        return [parse_cell(cell, column, kind)]
    row = [math.nan] * len(kind)
    if not _missing(cell):
        level = str(cell).strip().lower()
        if level in kind:
            row = [float(level == other) for other in kind]
    return row


def column_values(
    samples: Sequence[Sample],
    columns: Sequence[str],
    source: str,
    coding: Coding | None = None,
) -> np.ndarray:
    """The values of ``columns`` for every sample.

    Args:
        samples: ``N`` samples.
        columns: ``P`` column names (normalised as the manifest's header: ``t_score``, ``bmd``,
            ``age``, ``sex``, ``bmi``, ...).
        source: the data source's description, for messages.
        coding: how each column becomes numbers (:func:`infer_coding`); a column it does not
            name is a number.

    Returns:
        ``(N, P')`` float64, NaN where a value is unknown: one column per number, yes/no or
        sex column, one per level of a category (:func:`coded_names`).

    Raises:
        DataSourceError: a column no sample has (the message lists the columns the data has),
            or cells that are not numbers, yes/no answers or plausible values (each bad row
            named by file and line; the full list in the error's details).

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
    coding = coding or {}
    rows = np.full((len(samples), len(coded_names(columns, coding))), np.nan)
    errors: list[str] = []
    for i, sample in enumerate(samples):
        row: list[float] = []
        for column in columns:
            kind = coding.get(column, "number")
            try:
                row += _encode_cell(_cell(sample, column), column, kind)
            except ValueError as err:
                errors.append(f"{sample.where or sample.path}: {err}")
                row += [math.nan] * (len(kind) if isinstance(kind, list) else 1)
        rows[i] = row
    if errors:
        shown = "\n  ".join(errors[:MAX_REPORTED])
        more = (
            f"\n  ... and {len(errors) - MAX_REPORTED} more (all in the error's details file)"
            if len(errors) > MAX_REPORTED
            else ""
        )
        raise DataSourceError(
            f"{len(errors)} bad value(s) in {source}:\n  {shown}{more}", details=errors
        )
    return rows


def separating_columns(
    samples: Sequence[Sample],
    labels: np.ndarray,
    columns: Sequence[str],
    coding: Coding,
    threshold: float,
) -> list[tuple[str, float]]:
    """The covariates that on their own nearly separate the classes: a label in disguise (a
    Z-score, a diagnosis column, the T-score) rather than a risk factor.

    Each column alone (its encoded values; unknown as a value of its own) fits a shallow
    decision tree (depth ``ceil(log2(K))``: enough cut-points or levels for ``K`` classes),
    and its balanced accuracy on these samples is the column's score.

    Args:
        samples: the training split's ``N`` samples.
        labels: their ``(N,)`` class indices.
        columns: the covariates.
        coding: their coding.
        threshold: a score at or above this flags the column.

    Returns:
        ``(column, score)`` of every flagged column.
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.tree import DecisionTreeClassifier

    if len(np.unique(labels)) < 2:
        return []
    depth = max(1, math.ceil(math.log2(len(np.unique(labels)))))
    flagged = []
    for column in columns:
        x = column_values(samples, [column], "", coding)
        x = np.column_stack([np.nan_to_num(x, nan=-1e12), np.isnan(x).any(axis=1)])
        tree = DecisionTreeClassifier(max_depth=depth, class_weight="balanced", random_state=0)
        score = float(balanced_accuracy_score(labels, tree.fit(x, labels).predict(x)))
        if score >= threshold:
            flagged.append((column, score))
    return flagged


@dataclass(frozen=True)
class ColumnSpec:
    """The value columns every item carries (checked).

    Attributes:
        target: the regression target column (``t_score``, ``bmd``, ...), carried as
            ``"target"``; ``None``: none.
        covariates: clinical covariate columns, or ``"all"`` (:func:`covariate_candidates`).
        coding: how each covariate becomes numbers (a checkpoint's); ``None``: from the
            training split's cells.
        separating_threshold: the leakage guard's balanced accuracy (``None``: no check).
        allow_separating: covariates the guard lets through.
    """

    target: str | None = None
    covariates: tuple[str, ...] | str = ()
    coding: Coding | None = None
    separating_threshold: float | None = 0.95
    allow_separating: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        target: str | None,
        covariates: Sequence[str] | str,
        coding: Mapping[str, Any] | None,
        separating_threshold: float | None,
        allow_separating: Sequence[str] | None,
    ) -> ColumnSpec:
        """Check the settings (the DataModule's flat arguments).

        Raises:
            ConfigError: ``covariates`` neither a list nor ``all``, or a threshold outside (0, 1].
        """
        if isinstance(covariates, str) and covariates != "all":
            raise ConfigError(
                f"Expected argument `covariates` to be a list of column names or 'all', but got "
                f"{covariates!r}."
            )
        if separating_threshold is not None and not 0 < float(separating_threshold) <= 1:
            raise ConfigError(
                "Expected argument `separating_threshold` to be a balanced accuracy in (0, 1] "
                f"or null (no check), but got {separating_threshold!r}."
            )
        return cls(
            target=str(target) if target else None,
            covariates="all" if covariates == "all" else tuple(str(c) for c in covariates),
            coding=plain_coding(coding) if coding else None,
            separating_threshold=separating_threshold,
            allow_separating=tuple(str(c) for c in allow_separating or ()),
        )


@dataclass(frozen=True)
class Columns:
    """The value columns of a data set, resolved (:func:`resolve_columns`).

    Attributes:
        target: the target column or ``None``.
        covariates: the covariate columns (``all`` made a list).
        coding: how each covariate becomes numbers.
    """

    target: str | None = None
    covariates: tuple[str, ...] = ()
    coding: Coding = field(default_factory=dict)

    def names(self) -> list[str]:
        """The encoded covariate columns (a category's one-hot columns ``name=level``)."""
        return coded_names(self.covariates, self.coding)

    def values(self, samples: Sequence[Sample], where: str) -> np.ndarray:
        """``(N, T + P')`` float64 values of ``samples``: the target column (``T = 1`` when one
        is set) then the encoded covariates; NaN where unknown (a bad cell or a missing
        covariate column raises, see :func:`column_values`)."""
        t = int(bool(self.target))
        values = np.full((len(samples), t + len(self.names())), np.nan)
        # an absent target column is all-unknown here; the model that needs it says so
        if self.target and self.target in available_columns(samples):
            values[:, :1] = column_values(samples, [self.target], where)
        if self.covariates:
            values[:, t:] = column_values(samples, self.covariates, where, self.coding)
        return values

    def require_target(self, samples: Sequence[Sample], where: str) -> None:
        """Raise when the target column is not in the data (a model needs it).

        Raises:
            DataSourceError: no target set, or a column the source does not have (the message
                lists the columns it has).
        """
        have = available_columns(samples)
        if not self.target or self.target not in have:
            raise DataSourceError(
                f"The model regresses target column `{self.target}`, but "
                f"{where} has no such column; its value columns are: "
                f"{', '.join(have) or 'none'}. Choose one of them (model.target=...) or add the "
                "column to the manifest."
            )


def resolve_columns(
    spec: ColumnSpec, samples: Sequence[Sample], split_codes: np.ndarray, where: str
) -> Columns:
    """After the split: ``covariates=all`` as a list, the coding (the training split's, or the
    spec's), and the leakage guard on the training split.

    Args:
        spec: the columns asked for.
        samples: the data set's samples (true labels).
        split_codes: ``(N,)`` their splits.
        where: the source's description, for messages.

    Raises:
        DataSourceError: a covariate that alone nearly separates the training classes and is
            not allowed (see :func:`separating_columns`), or a bad cell.
    """
    covariates = list(spec.covariates) if spec.covariates != "all" else []
    if spec.covariates == "all":
        covariates = covariate_candidates(samples, [spec.target] if spec.target else [])
        log.info(f"covariates=all: {', '.join(covariates) or 'none'} (from {where}).")
    train = [s for s, c in zip(samples, split_codes, strict=True) if c == TRAIN]
    coding = (
        spec.coding
        if spec.coding is not None
        else infer_coding(train or samples, covariates, where)
    )
    columns = Columns(spec.target, tuple(covariates), dict(coding))
    threshold = spec.separating_threshold
    if not train or threshold is None or not covariates:
        return columns
    labels = np.array([s.label for s in train])
    flagged = [
        (c, score)
        for c, score in separating_columns(train, labels, covariates, coding, float(threshold))
        if c not in spec.allow_separating
    ]
    if flagged:
        shown = ", ".join(f"`{c}` (balanced accuracy {score:.2f})" for c, score in flagged)
        raise DataSourceError(
            f"Covariate(s) {shown} on their own nearly separate the classes of the "
            f"{len(train)} training images of {where}: a label in disguise (a Z-score, a "
            "diagnosis, the T-score) leaks the answer into the model. Leave them out of "
            "model.covariates, or, if intended, allow them: "
            f"data.allow_separating=[{','.join(c for c, _ in flagged)}] (the threshold is "
            f"data.separating_threshold={threshold})."
        )
    return columns


def split_values(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """The target ``(n,)`` and covariates ``(n, P)`` of one split's dataset (NaN unknown; the
    target all NaN when none is set)."""
    n = len(dataset)
    targets = dataset.targets if dataset.targets is not None else np.full(n, np.nan)
    covariates = dataset.covariates if dataset.covariates is not None else np.zeros((n, 0))
    return np.asarray(targets, dtype=np.float64), np.asarray(covariates, dtype=np.float64)


def values_summary(columns: Columns, datasets: Mapping[str, Any]) -> list[str]:
    """How many images of each split lack the target and each covariate."""
    if not (columns.target or columns.covariates) or not datasets:
        return []
    names = ([columns.target] if columns.target else []) + columns.names()
    parts = []
    for split in SPLIT_NAMES:
        targets, covariates = split_values(datasets[split])
        values = np.column_stack([targets, covariates]) if columns.target else covariates
        unknown = np.isnan(values).sum(axis=0)
        parts.append(
            f"{split} " + ", ".join(f"{n}={int(u)}" for n, u in zip(names, unknown, strict=True))
        )
    return [f"  unknown values (left out of the regression loss / imputed): {'; '.join(parts)}"]
