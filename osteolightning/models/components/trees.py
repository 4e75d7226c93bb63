"""Gradient-boosted trees as tensors: a fitted scikit-learn ``HistGradientBoosting*`` model's
trees, every node concatenated into buffers (:class:`TreeForest`), and a vectorised walk that
predicts from them (:func:`forest_outputs`), so a checkpoint holds tensors only and loads with
``torch.load(weights_only=True)``. Tested against scikit-learn's ``predict_proba`` / ``predict``
(``tests/models/test_tabular.py``); :mod:`osteolightning.models.tabular` uses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from osteolightning.errors import ConfigError

#: below this many training rows the trees grow on one thread: measured on 2 cores, a thread
#: pool gains nothing on a clinical table (300 or 3000 rows, 0.1 s either way) and costs up to
#: 50 times as much when other processes hold the cores (OpenMP threads spin-wait)
ONE_THREAD_ROWS = 10_000
#: the buffers of a :class:`TreeForest` and their types: per node (all trees concatenated) the
#: split feature, threshold, where an unknown value goes, the children (indices into the
#: concatenation), whether it is a leaf and its value; per tree its root and output column;
#: per output the starting (baseline) value
FOREST_BUFFERS: dict[str, torch.dtype] = {
    "feature": torch.int64,
    "threshold": torch.float64,
    "missing_left": torch.bool,
    "left": torch.int64,
    "right": torch.int64,
    "is_leaf": torch.bool,
    "value": torch.float64,
    "roots": torch.int64,
    "column": torch.int64,
    "baseline": torch.float64,
}
_NUMPY = {torch.int64: np.int64, torch.float64: np.float64, torch.bool: np.bool_}


def forest_outputs(forest: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Every output of a forest: the baseline plus, per output column, the leaf values its
    trees reach (all samples and trees walked at once, one level per step).

    A node sends a sample left when its feature is ``<= threshold``, and an unknown (NaN) value
    the way ``missing_left`` says: scikit-learn's ``HistGradientBoosting*`` prediction.

    Args:
        forest: the arrays of :data:`FOREST_BUFFERS`.
        x: ``(M, P)`` raw features, NaN where unknown.

    Returns:
        ``(M, O)`` float64 raw outputs (logits, or the regression value).
    """
    baseline = forest["baseline"].double()
    x = x.to(baseline.device, torch.float64)
    out = baseline.expand(len(x), -1).clone()  # (M, O)
    roots = forest["roots"]
    if not len(roots) or not len(x):
        return out
    feature, threshold = forest["feature"], forest["threshold"].double()
    left, right, leaf = forest["left"], forest["right"], forest["is_leaf"]
    missing_left = forest["missing_left"]
    rows = torch.arange(len(x), device=x.device)[:, None]  # (M, 1)
    node = roots.expand(len(x), -1).clone()  # (M, T): every sample at every tree's root
    at_leaf = leaf[node]
    while not bool(at_leaf.all()):  # one level of every tree per step
        values = x[rows, feature[node]]  # (M, T)
        go_left = torch.where(values.isnan(), missing_left[node], values <= threshold[node])
        node = torch.where(at_leaf, node, torch.where(go_left, left[node], right[node]))
        at_leaf = leaf[node]
    return out.index_add_(1, forest["column"], forest["value"].double()[node])


@dataclass(frozen=True)
class TreesFit:
    """Fitted trees as arrays (:data:`FOREST_BUFFERS`): what
    :meth:`BoostedTreesClassifier.fit_head` returns and :class:`TreeForest` holds.

    Attributes:
        arrays: name → array.
        info: what the fit made (``n_trees``, ``n_nodes``), logged as ``train/*``.
    """

    arrays: dict[str, np.ndarray]
    info: dict[str, float]

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """``(M, P)`` raw covariates → ``(M, O)`` outputs (the ``K`` logits, then the
        standardised target prediction)."""
        forest = {name: torch.as_tensor(a) for name, a in self.arrays.items()}
        return forest_outputs(forest, torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


def forest_arrays(
    models: Sequence[tuple[Any, Sequence[int]]], baseline: np.ndarray
) -> dict[str, np.ndarray]:
    """The trees of fitted ``HistGradientBoosting*`` models as one forest.

    Args:
        models: ``(model, columns)``: the trees a model grows for its ``k``-th raw output
            each iteration add to output column ``columns[k]``; its baseline prediction is
            added to ``baseline`` there.
        baseline: ``(O,)`` the outputs' starting values without the models' baselines.

    Returns:
        The arrays of :data:`FOREST_BUFFERS` (children as indices into the concatenation).

    Raises:
        ConfigError: a model with categorical splits (the forest holds numeric ones only).
    """
    baseline = np.array(baseline, dtype=np.float64, copy=True)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FOREST_BUFFERS if name != "baseline"}
    offset = 0
    for model, columns in models:
        baseline[list(columns)] += np.asarray(model._baseline_prediction).reshape(-1)
        for iteration in model._predictors:  # scikit-learn's fitted trees (TreePredictor)
            for k, predictor in enumerate(iteration):
                nodes = predictor.nodes
                if nodes["is_categorical"].any():
                    raise ConfigError(
                        "Expected numeric splits only in the boosted trees, but a tree splits "
                        "on a categorical feature."
                    )
                leaf = nodes["is_leaf"].astype(bool)
                parts["feature"].append(np.where(leaf, 0, nodes["feature_idx"]))
                parts["threshold"].append(nodes["num_threshold"].astype(np.float64))
                parts["missing_left"].append(nodes["missing_go_to_left"].astype(bool))
                parts["left"].append(nodes["left"].astype(np.int64) + offset)
                parts["right"].append(nodes["right"].astype(np.int64) + offset)
                parts["is_leaf"].append(leaf)
                parts["value"].append(nodes["value"].astype(np.float64))
                parts["roots"].append(np.array([offset]))
                parts["column"].append(np.array([columns[k]]))
                offset += len(nodes)
    arrays = {"baseline": baseline}
    for name, chunks in parts.items():
        dtype = _NUMPY[FOREST_BUFFERS[name]]
        arrays[name] = np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)
    return arrays


class TreeForest(nn.Module):
    """Fitted regression trees as buffers (:data:`FOREST_BUFFERS`), walked in torch:
    ``(M, P)`` raw features → ``(M, O)`` outputs.

    The buffers' sizes are known after the fit only: a freshly built forest is empty (its
    outputs the zero baseline), and loading a state dict resizes them to the checkpoint's.

    Args:
        n_outputs: ``O`` (the ``K`` logits, and a regression output).

    Example:
        >>> TreeForest(3)(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, n_outputs: int) -> None:
        super().__init__()
        for name, dtype in FOREST_BUFFERS.items():
            size = int(n_outputs) if name == "baseline" else 0
            self.register_buffer(name, torch.zeros(size, dtype=dtype))

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def set(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Hold the trees of ``arrays`` (:func:`forest_arrays`)."""
        for name, dtype in FOREST_BUFFERS.items():
            old = getattr(self, name)
            setattr(self, name, torch.as_tensor(arrays[name], dtype=dtype, device=old.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, P)`` → ``(M, O)`` float64."""
        return forest_outputs({name: getattr(self, name) for name in FOREST_BUFFERS}, x)

    def _apply(self, fn: Any, recurse: bool = True) -> TreeForest:
        # moved with the module, but never rounded: a threshold in half precision would send
        # samples down other branches (e.g. under Trainer(precision="bf16-true"))
        for name, buffer in self._buffers.items():
            moved = fn(buffer)
            self._buffers[name] = moved if moved.dtype == buffer.dtype else buffer.to(moved.device)
        return self

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # a checkpoint's trees: take their sizes before the default copy into the buffers
        for name, dtype in FOREST_BUFFERS.items():
            stored = state_dict.get(prefix + name)
            if isinstance(stored, torch.Tensor) and stored.shape != getattr(self, name).shape:
                setattr(
                    self, name, torch.empty(stored.shape, dtype=dtype, device=self.roots.device)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
