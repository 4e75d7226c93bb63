"""The run directory's files: the one place that names them, writes and reads predictions
and ``splits.csv``.

Every command writes into a run directory (``logs/<task>/runs/<stamp>/`` or a multirun job)
and many read one back (``osteo-eval`` beside a checkpoint, the ensembles, the leaderboard,
``resume``). The names below are the contract between them; nothing else in the package spells
a run file's name. A checkpoint's run is the folder above its ``checkpoints/`` folder
(:func:`run_of_checkpoint`).

Classification predictions (test, validation, fused ensembles) share one format, written by
:func:`write_predictions` and read by :func:`read_predictions`::

    [extra columns,] path,label,prob_<class>...,prediction[,trailing columns]

A model with a regression head adds trailing columns (``t_score,t_score_pred,t_score_low,
t_score_high,who_prediction``; see :mod:`osteolightning.callbacks.target_outputs`), which
:func:`read_predictions` ignores like any column it does not know.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from osteolightning.errors import DataSourceError
from osteolightning.utils.files import atomic_write_csv

#: the resolved config and the overrides Hydra saves for every run
HYDRA_DIR = ".hydra"
CONFIG = f"{HYDRA_DIR}/config.yaml"
OVERRIDES = f"{HYDRA_DIR}/overrides.yaml"
#: Hydra's record of a multirun (in the multirun directory, beside the job folders)
MULTIRUN = "multirun.yaml"
#: the run's state for ``resume`` (:mod:`osteolightning.runs.lifecycle`)
MARKER = ".osteo_run.json"
CHECKPOINTS = "checkpoints"
#: the full training state, written during training, for ``resume``
LAST_CKPT = f"{CHECKPOINTS}/last.ckpt"
#: final metrics: flat ``test/*`` keys with their ``_ci95`` intervals
METRICS = "metrics.json"
#: one row per test image; classifiers: the format of :func:`write_predictions`
PREDICTIONS = "predictions.csv"
#: the tested checkpoint on the validation split (what ``weighted_mean`` fits its weights on)
VAL_PREDICTIONS = "val_predictions.csv"
#: a regression head's split-conformal calibration (on the validation split), for the
#: intervals of ``osteo-eval`` and ``osteo-predict`` with the same checkpoint
CONFORMAL = "conformal.json"
#: an ensemble's members: one report per member on the fused run's bootstrap
MEMBERS = "members.json"
#: ``osteo-eval`` ensemble mode: one folder per member's own evaluation
MEMBERS_DIR = "members"
#: every image with its split (audit the split: ``osteo-data audit ROOT splits=<run>``)
SPLITS = "splits.csv"
#: its columns (:func:`write_splits`, :func:`read_splits`)
SPLITS_COLUMNS = ("split", "path", "label", "patient_id", "group", "sha1")
SKIPPED = "skipped.csv"
LABEL_CONFLICTS = "label_conflicts.csv"
VERSIONS = "versions.json"
#: a multirun job that failed: the exception, traceback and overrides
ERROR = "error.json"
#: the full list behind an error message that shows a few items (``and N more``)
ERROR_DETAILS = "error_details.txt"
#: ``osteo-train reproduce=<run>``: the recorded and the reproduced metrics, side by side
REPRODUCTION = "reproduction.json"
#: the CSV logger's folder, its per-step file, and the test metrics table beside it
CSV_DIR = "csv"
CSV_METRICS = f"{CSV_DIR}/metrics.csv"
TEST_METRICS_CSV = "test_metrics.csv"
WANDB_DIR = "wandb"
FIGURES = "figures"
#: the saliency report: per test image, its saliency's share in the border band and the bone
SALIENCY = "saliency.csv"
#: in ``figures/``: correct and wrong test cases of each class with their saliency maps
SALIENCY_GRID = "saliency_grid.png"
#: the run's model card, built from the run's own files when it finishes
MODEL_CARD = "MODEL_CARD.md"
#: ``osteo-export``: what was exported, its metadata and the parity check
EXPORT_REPORT = "export.json"
TEST_MASKS = "test_masks"
#: a multirun job's record (where and how it ran, when, what it returned), beside .hydra/
JOB_RECORD = ".osteo_job.json"
#: in a multirun directory: earlier attempts of its jobs, set aside when a resumed sweep or a
#: retried Optuna trial runs a killed job again from the start
ATTEMPTS_DIR = ".attempts"
#: in an Optuna study's directory: the study (Optuna's journal storage), the lock its workers
#: take to ask for trials, and the best trial so far
STUDY_JOURNAL = "optuna_journal.log"
STUDY_LOCK = ".optuna_study.lock"
OPTIMIZATION_RESULTS = "optimization_results.yaml"
#: a sweep's leaderboard folder (in the multirun directory) and its marker
LEADERBOARD = "leaderboard"
LEADERBOARD_MARKER = ".osteo_leaderboard.json"
#: files and folders that are a run's results: where one exists, the directory is taken
RESULTS = (METRICS, PREDICTIONS, CHECKPOINTS, CSV_METRICS, WANDB_DIR, MARKER)


def run_of_checkpoint(ckpt_path: str | Path) -> Path:
    """The run directory of ``<run>/checkpoints/<name>.ckpt`` (symbolic links resolved)."""
    return Path(ckpt_path).resolve().parent.parent


def read_json(path: str | Path) -> Any:
    """A JSON file's content, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``<run>/metrics.json`` as a dict; ``{}`` when there is none.

    Raises:
        DataSourceError: the file exists but is not a JSON object.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataSourceError(f"Cannot read '{path}': {err}") from err
    if not isinstance(metrics, dict):
        raise DataSourceError(f"'{path}' is not a JSON object of metrics.")
    return metrics


# --------------------------------------------------------------------------- splits


def write_splits(run_dir: str | Path, rows: Iterable[Sequence[Any]]) -> Path:
    """Write ``<run>/splits.csv``: one row per image, :data:`SPLITS_COLUMNS` (atomic).

    Returns:
        The file written.
    """
    path = Path(run_dir) / SPLITS
    atomic_write_csv(path, list(SPLITS_COLUMNS), rows)
    return path


def find_splits(run_dir: str | Path) -> Path | None:
    """``<run>/splits.csv``, or ``None`` when the run has none."""
    path = Path(run_dir) / SPLITS
    return path if path.is_file() else None


def read_image_paths(path: str | Path) -> list[Path]:
    """The ``path`` column of a run's table of images (``predictions.csv``, ``splits.csv``), as
    written; rows without a path are passed over."""
    with open(path, newline="") as handle:
        return [Path(row["path"]) for row in csv.DictReader(handle) if row.get("path")]


def read_splits(splits: str | Path) -> tuple[Path, list[dict[str, str]]]:
    """Read a run's ``splits.csv`` (or the one in a run directory); paths made absolute.

    Args:
        splits: a run directory holding ``splits.csv``, or that file.

    Returns:
        The file read and its rows (``split``, ``path``, ``label``, ``patient_id``, ``group``,
        ``sha1``), ``path`` absolute.

    Raises:
        DataSourceError: the file is missing or lacks the ``split`` / ``path`` columns.
    """
    path = Path(splits)
    if path.is_dir():
        path = path / SPLITS
    if not path.is_file():
        raise DataSourceError(
            f"Expected `splits` to be a run directory holding splits.csv or a splits.csv file, "
            f"but '{splits}' is neither."
        )
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("split", "path") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataSourceError(
                f"'{path}' lacks column(s) {', '.join(missing)}; expected the header "
                f"{','.join(SPLITS_COLUMNS)} written by a run."
            )
        rows = list(reader)
    for row in rows:
        row["path"] = os.path.abspath(os.path.join(path.parent, row["path"]))
    return path, rows


# --------------------------------------------------------------------------- predictions


def prediction_header(class_names: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """``[extra..., path, label, prob_<class>..., prediction]``."""
    return [*extra, "path", "label", *[f"prob_{c}" for c in class_names], "prediction"]


def write_predictions(
    path: str | Path,
    paths: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    preds: np.ndarray | None = None,
    extra: Mapping[str, Sequence[Any]] | None = None,
    trailing: Mapping[str, Sequence[Any]] | None = None,
) -> Path:
    """Write one ``path,label,prob_<class>...,prediction`` row per image, atomically.

    Every command writes classification predictions through here: a run's test and validation
    predictions, and the fused predictions of ``osteo-ensemble``, ``osteo-eval`` ensemble mode
    and the leaderboard, so the same numbers give the same bytes.

    Args:
        path: the CSV file.
        paths: ``N`` image paths.
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` class probabilities (written with 6 decimals).
        class_names: ``K`` class names in label-index order.
        preds: ``(N,)`` predicted classes; ``None``: the argmax of ``probs`` (a fusion whose
            prediction is not the argmax of its probabilities passes its own).
        extra: leading columns, name → ``N`` values (the leaderboard's ``seed``, ``fold``).
        trailing: columns after ``prediction``, name → ``N`` values (a regression head's
            target, prediction and interval: floats with 4 decimals, ``""`` for NaN / None).

    Returns:
        ``path``.
    """
    extra = dict(extra or {})
    probs = np.asarray(probs)
    preds = probs.argmax(axis=1) if preds is None else np.asarray(preds)
    columns = list(zip(*extra.values(), strict=True)) if extra else [()] * len(paths)
    rows = [
        [*lead, name, class_names[int(y)], *[f"{v:.6f}" for v in p], class_names[int(k)]]
        for lead, name, y, p, k in zip(columns, paths, labels, probs, preds, strict=True)
    ]
    trailing = dict(trailing or {})
    if trailing:
        cells = zip(*([_cell(v) for v in values] for values in trailing.values()), strict=True)
        rows = [row + list(more) for row, more in zip(rows, cells, strict=True)]
    header = prediction_header(class_names, list(extra)) + list(trailing)
    return atomic_write_csv(path, header, rows)


def _cell(value: Any) -> str:
    """A trailing cell: a float with 4 decimals, ``""`` for NaN / None, else the text."""
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{float(value):.4f}"
    return str(value)


@dataclass(frozen=True)
class RunPredictions:
    """One predictions file: ``rows`` maps path → (label name, ``(K,)`` probabilities).

    Attributes:
        source: the file, resolved.
        class_names: from its ``prob_`` columns, in column order.
        rows: path → (label, probabilities), in file order.
    """

    source: Path
    class_names: list[str]
    rows: dict[str, tuple[str, np.ndarray]]


def read_predictions(path: str | Path) -> RunPredictions:
    """Read a predictions CSV (class names from its ``prob_`` columns; extra columns ignored).

    Raises:
        DataSourceError: a wrong header, a non-numeric probability, a repeated path or no rows.
    """
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        names = [c.removeprefix("prob_") for c in header if c.startswith("prob_")]
        if "path" not in header or "label" not in header or len(names) < 2:
            raise DataSourceError(
                f"'{path}' is not a predictions file: expected the header "
                f"path,label,prob_<class>...,prediction, but got {header}."
            )
        rows: dict[str, tuple[str, np.ndarray]] = {}
        for line, row in enumerate(reader, start=2):
            if row["path"] in rows:
                raise DataSourceError(f"'{path}' line {line}: '{row['path']}' appears twice.")
            try:
                rows[row["path"]] = (
                    row["label"],
                    np.array([float(row[f"prob_{c}"]) for c in names]),
                )
            except (TypeError, ValueError) as err:
                raise DataSourceError(
                    f"'{path}' line {line}: expected a number in every prob_ column, but got {row}."
                ) from err
    if not rows:
        raise DataSourceError(f"'{path}' holds no predictions.")
    return RunPredictions(path.resolve(), names, rows)


def read_target_predictions(path: str | Path, target: str = "t_score") -> dict[str, np.ndarray]:
    """The regression columns of a predictions CSV: path → ``[truth, prediction, low, high]``
    (NaN where a cell is empty: unknown truth, no interval); ``{}`` when the file has no
    ``<target>_pred`` column (a model without a regression head).

    Raises:
        DataSourceError: a cell that is neither empty nor a number, naming the line.
    """
    columns = [target, f"{target}_pred", f"{target}_low", f"{target}_high"]
    out: dict[str, np.ndarray] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if f"{target}_pred" not in (reader.fieldnames or []):
            return {}
        for line, row in enumerate(reader, start=2):
            try:
                out[row["path"]] = np.array(
                    [float(row.get(c) or "nan") for c in columns], dtype=np.float64
                )
            except ValueError as err:
                raise DataSourceError(
                    f"'{path}' line {line}: expected numbers (or empty) in {columns}, but got "
                    f"{[row.get(c) for c in columns]}."
                ) from err
    return out


def has_probabilities(path: str | Path) -> bool:
    """Whether ``path`` is a predictions file with class probabilities (a classifier's, not a
    segmenter's per-image scores)."""
    try:
        with open(path, newline="") as handle:
            header = handle.readline().strip().split(",")
    except OSError:
        return False
    return sum(c.startswith("prob_") for c in header) >= 2


def predictions_file(run: str | Path, name: str = PREDICTIONS) -> Path:
    """``RUN/name`` for a run directory; for a CSV file, the file itself (``name`` =
    :data:`PREDICTIONS`) or ``name`` beside it."""
    path = Path(run)
    if path.is_dir():
        return path / name
    return path if name == PREDICTIONS else path.with_name(name)


def read_image_scores(path: str | Path, metric: str = "dice") -> tuple[list[str], np.ndarray]:
    """A segmentation run's per-image scores (``path,mask,<metric>_<class>...``).

    Args:
        path: the ``predictions.csv`` of a segmentation run.
        metric: the column prefix (``dice``, ``iou``, ``hd95``).

    Returns:
        ``(paths, scores)``: ``N`` image paths and ``(N, C)`` scores of the ``C`` foreground
        classes, NaN where a score is undefined (an empty cell: the class absent from truth and
        prediction).

    Raises:
        DataSourceError: no ``path`` column, no ``<metric>_`` columns, a value that is not a
            number, or no rows.
    """
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        columns = [c for c in header if c.startswith(f"{metric}_")]
        if "path" not in header or not columns:
            raise DataSourceError(
                f"'{path}' holds no per-image {metric} scores: expected the header "
                f"path,mask,{metric}_<class>..., but got {header}."
            )
        paths, rows = [], []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(
                    [float(row[c]) if row[c] not in ("", None) else np.nan for c in columns]
                )
            except ValueError as err:
                raise DataSourceError(
                    f"'{path}' line {line}: expected a number or an empty cell in every "
                    f"{metric}_ column, but got {row}."
                ) from err
            paths.append(row["path"])
    if not rows:
        raise DataSourceError(f"'{path}' holds no predictions.")
    return paths, np.asarray(rows, dtype=np.float64)
