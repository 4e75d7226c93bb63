"""Ensemble members: predictions matched image by image, and fused the same way everywhere.

``osteo-ensemble runs=[...]``, ``osteo-eval`` ensemble mode and the leaderboard's ensemble rows
all read their members' predictions files (:func:`osteolightning.runs.rundir.read_predictions`)
and call :func:`fuse_runs`; the first two write the result with :func:`write_fused`. So a fused
prediction, ``members.json`` and the fused ``metrics.json`` mean the same whichever command
made them, and the same members give byte-identical fused ``predictions.csv`` files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from osteolightning.ensemble.fusion import check_method, fit_fusion_weights, fuse
from osteolightning.errors import ConfigError, DataSourceError
from osteolightning.metrics.report import evaluation_report
from osteolightning.runs import rundir
from osteolightning.runs.rundir import RunPredictions
from osteolightning.utils.files import atomic_write_json
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def member_name(index: int, run_cfg: Mapping[str, Any] | None) -> str:
    """``<index>-<backbone>``, the backbone read from the member's run config (``model.net.name``;
    ``model`` where the config names none)."""
    model = (run_cfg or {}).get("model") or {}
    net = model.get("net") or {} if isinstance(model, Mapping) else {}
    name = str(net.get("name") or "model")
    return f"{index}-{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}"


def align(
    runs: Sequence[RunPredictions], class_names: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Rows of every run matched by path (the first run's order), columns by class name.

    Args:
        runs: M runs' predictions.
        class_names: the column order; the first run's by default.

    Returns:
        ``(paths, labels (N,), probs (M, N, K))``.

    Raises:
        DataSourceError: other class names, a path missing from a run, labels that disagree or
            a label that is not a class.
    """
    names, first = list(class_names or runs[0].class_names), runs[0]
    for run in runs:
        if sorted(run.class_names) != sorted(names):
            raise DataSourceError(
                f"'{run.source}' has classes {run.class_names}, expected {names}."
            )
        for a, b in ((first, run), (run, first)):
            missing = [p for p in a.rows if p not in b.rows]
            if missing:
                raise DataSourceError(
                    f"'{missing[0]}' is in '{a.source}' but missing from '{b.source}' "
                    f"({len(missing)} such paths); fuse runs tested on the same images."
                )
    paths = list(first.rows)
    for path in paths:
        label = first.rows[path][0]
        if label not in names or any(r.rows[path][0] != label for r in runs):
            found = {str(r.source): r.rows[path][0] for r in runs}
            raise DataSourceError(f"'{path}' has labels {found}; expected one of {names} in all.")
    labels = np.array([names.index(first.rows[p][0]) for p in paths])
    matrices = [np.stack([r.rows[p][1] for p in paths]) for r in runs]  # M × (N, K)
    probs = np.stack(
        [m[:, [r.class_names.index(c) for c in names]] for m, r in zip(matrices, runs, strict=True)]
    )
    return paths, labels, probs


def common_images(members: Sequence[RunPredictions]) -> list[RunPredictions]:
    """The members restricted to the images all of them predicted (a member whose data
    preparation left out a file, e.g. a copy group found at its input size, drops it for all).

    Raises:
        DataSourceError: no image in common.
    """
    common = set(members[0].rows).intersection(*(m.rows for m in members[1:]))
    dropped = {p for m in members for p in m.rows} - common
    if not common:
        raise DataSourceError("The ensemble's members predicted no image in common.")
    if dropped:
        log.warning(
            f"{len(dropped)} images were predicted by some members only and are left out of "
            f"the ensemble, e.g. '{sorted(dropped)[0]}'."
        )
    return [replace(m, rows={p: r for p, r in m.rows.items() if p in common}) for m in members]


def fit_validation_weights(
    validation: Sequence[RunPredictions], class_names: Sequence[str]
) -> np.ndarray:
    """The weighted-mean fusion's weights, fitted on the members' validation predictions
    (aligned image by image; see :func:`~osteolightning.ensemble.fusion.fit_fusion_weights`)."""
    _, labels, probs = align(list(validation), class_names)
    return fit_fusion_weights(probs, labels)


@dataclass(frozen=True)
class Fused:
    """Members' predictions on the same images and their fusion.

    Attributes:
        method: the fusion (a key of :data:`~osteolightning.ensemble.fusion.FUSIONS`).
        top_k: the fuzzy rank top-k option (``None`` for other methods).
        class_names: ``K`` classes, the columns of the probabilities.
        paths: ``N`` image paths, in the first member's order.
        labels: ``(N,)`` true classes.
        member_probs: ``(M, N, K)`` each member's probabilities.
        probs: ``(N, K)`` fused probabilities.
        preds: ``(N,)`` fused predictions (fuzzy rank: the argmin of the fused score).
        weights: ``(M,)`` the weighted mean's fitted weights, else ``None``.
    """

    method: str
    top_k: int | None
    class_names: list[str]
    paths: list[str]
    labels: np.ndarray
    member_probs: np.ndarray
    probs: np.ndarray
    preds: np.ndarray
    weights: np.ndarray | None = None

    @property
    def label(self) -> str:
        """The method as rows and files name it: ``fuzzy_rank_top2`` for a top-k fuzzy rank."""
        return f"{self.method}_top{self.top_k}" if self.top_k else self.method


def fuse_runs(
    members: Sequence[RunPredictions],
    method: str,
    top_k: int | None = None,
    validation: Sequence[RunPredictions] | None = None,
    class_names: Sequence[str] | None = None,
) -> Fused:
    """Align the members' predictions by image and fuse them.

    Args:
        members: M members' predictions on the same images.
        method: the fusion method.
        top_k: the fuzzy rank top-k option (ignored by the other methods).
        validation: the members' validation predictions, in the same order; ``weighted_mean``
            fits its weights on them.
        class_names: the column order; the first member's by default.

    Returns:
        The fusion.

    Raises:
        ConfigError: an unknown method, or ``weighted_mean`` without ``validation``.
        DataSourceError: members whose images, labels or classes do not match.
    """
    method = check_method(method)
    top_k = top_k if method == "fuzzy_rank" else None
    names = list(class_names or members[0].class_names)
    paths, labels, probs = align(members, names)
    weights = None
    if method == "weighted_mean":
        if validation is None:
            raise ConfigError(
                "method=weighted_mean fits its weights on the members' validation predictions "
                f"({rundir.VAL_PREDICTIONS}), but none were given; use fuzzy_rank, mean or "
                "majority_vote."
            )
        weights = fit_validation_weights(validation, names)
    fused, preds = fuse(method, probs, top_k=top_k, weights=weights)
    return Fused(method, top_k, names, paths, labels, probs, fused, preds, weights)


def write_fused(
    out_dir: str | Path,
    fused: Fused,
    names: Sequence[str],
    sources: Sequence[str],
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Write a fusion into a run directory: ``predictions.csv``, ``members.json`` (each
    member's report on the fused run's bootstrap: ``{"member", "source", "test/..."}``) and,
    last, ``metrics.json`` (``method``, ``top_k``, ``members``, ``sources``, ``weights`` and the
    fused report).

    Args:
        out_dir: the run directory.
        fused: from :func:`fuse_runs`.
        names: each member's name (:func:`member_name`).
        sources: what each member was read from (a predictions file, a checkpoint).
        n_resamples: bootstrap resamples of the intervals.
        seed: bootstrap seed.

    Returns:
        The fused run's metrics (``metrics.json``'s content).
    """
    out = Path(out_dir)
    report = partial(
        evaluation_report,
        fused.labels,
        class_names=fused.class_names,
        n_resamples=n_resamples,
        seed=seed,
    )
    rundir.write_predictions(
        out / rundir.PREDICTIONS,
        fused.paths,
        fused.labels,
        fused.probs,
        fused.class_names,
        preds=fused.preds,
    )
    members = [
        {"member": name, "source": str(source), **report(probs)}
        for name, source, probs in zip(names, sources, fused.member_probs, strict=True)
    ]
    atomic_write_json(out / rundir.MEMBERS, members)
    metrics: dict[str, Any] = {
        "method": fused.method,
        "top_k": fused.top_k,
        "members": list(names),
        "sources": [str(s) for s in sources],
        **report(fused.probs),
    }
    if fused.weights is not None:
        metrics["weights"] = [float(w) for w in fused.weights]
    atomic_write_json(out / rundir.METRICS, metrics)  # last: its presence means the run finished
    for member in members:
        log.info(
            f"member {member['member']}: acc {member['test/acc']:.4f}, "
            f"f1_macro {member['test/f1_macro']:.4f}"
        )
    log.info(f"Fused {len(fused.paths)} predictions of {len(names)} members ({fused.method}).")
    return metrics
