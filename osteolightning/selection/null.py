"""Is there a signal at all, and would more data help? For fitted-head recipes (linear probe,
texture), in-process from the outer runs' own files.

A fitted-head model's procedure on one fold is: the features of every image (which do not
depend on the labels, and are in the feature cache since the runs), then the logistic head
fitted on the training split (its strength chosen by inner CV). So the whole procedure re-runs
on shuffled labels in seconds: :func:`permutation_test` shuffles the labels between image
groups (:func:`~osteolightning.data.splits.permute_group_labels`; the folds stay), refits
every fold's head and scores the pooled out-of-fold predictions, many times; the p-value is
``(1 + #{null >= observed}) / (1 + n)`` (Phipson & Smyth 2010), as scikit-learn's
``permutation_test_score``. :func:`learning_curve` refits on growing shares of each training
split (whole groups, stratified) and scores the same outer test folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch

from osteolightning.data.splits import (
    TEST,
    TRAIN,
    permute_group_labels,
    subsample_training,
)
from osteolightning.errors import ConfigError
from osteolightning.metrics.report import cluster_bootstrap_report, metric_table
from osteolightning.models.checkpointing import load_checkpoint
from osteolightning.models.fitted import FittedHeadClassifier
from osteolightning.runs import rundir
from osteolightning.utils.logging import get_logger

log = get_logger(__name__)


def one_thread() -> Any:
    """BLAS on one thread for the thousands of small logistic fits: each is a few milliseconds
    of work, and a thread pool's start-up and spinning cost more than they save (measured:
    0.28 s a fold on one thread against 0.35 s on two idle cores, and about 3 s against 0.3 s
    when other processes hold the cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


@dataclass
class Fold:
    """One outer fold's features, ready to refit: every image of the data set once."""

    paths: list[str]
    features: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,) true labels
    groups: np.ndarray  # (N,)
    codes: np.ndarray  # (N,) split codes of the outer run
    model: FittedHeadClassifier
    targets: np.ndarray | None = None  # (N,) the regression target (NaN unknown), if any

    def fit_and_predict(
        self,
        labels: np.ndarray,
        codes: np.ndarray | None = None,
        image_order: np.ndarray | None = None,
    ) -> np.ndarray:
        """Fit the model's head (its own procedure, :meth:`FittedHeadClassifier.fit_head`) on
        the training split under ``labels`` (and, given ``image_order``, with the image block
        of the features taken from the images in that order: a conditional permutation) and
        return ``(n_test, K)`` probabilities of the test split."""
        codes = self.codes if codes is None else codes
        features = self.features
        if image_order is not None:
            d = int(self.model.net.image_dim)
            features = features.copy()
            features[:, :d] = self.features[image_order, :d]
        train, test = codes == TRAIN, codes == TEST
        targets = self.targets if self.targets is not None else np.full(len(labels), np.nan)
        fit = self.model.fit_head(
            features[train], labels[train], self.groups[train], targets[train]
        )
        k = len(self.model.hparams.class_names)
        logits = fit.outputs(features[test])[:, :k]
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)


def load_fold(run_dir: str | Path) -> Fold:
    """An outer run's data and fitted-head model, every image's features (from the cache).

    Raises:
        ConfigError: the run's model is not a fitted-head model.
    """
    run_dir = Path(run_dir)
    metrics = rundir.read_metrics(run_dir)
    ckpt = metrics.get("ckpt_path") or str(run_dir / rundir.LAST_CKPT)
    model, run_cfg = load_checkpoint(ckpt)
    if not isinstance(model, FittedHeadClassifier):
        raise ConfigError(
            f"'{run_dir}' ran {type(model).__name__}: the in-process permutation test and "
            "learning curve refit fitted-head models (model=linear_probe, model=texture) only."
        )
    datamodule = hydra.utils.instantiate(run_cfg["data"])
    datamodule.setup("fit")
    model.eval()
    rows = []  # (sample index, features) of every split the run made
    with torch.no_grad():
        for dataset in datamodule.datasets.values():
            for start in range(0, len(dataset), 64):
                items = [dataset[i] for i in range(start, min(start + 64, len(dataset)))]
                batch = {
                    "image": torch.stack([it["image"] for it in items]),
                    "key": [it["key"] for it in items],
                    "augmented": torch.tensor([False]),
                }
                for extra in ("covariates", "mask"):  # a covariate or bone-region model's
                    if extra in items[0]:
                        batch[extra] = torch.stack([it[extra] for it in items])
                features = model.all_features(batch).numpy()
                rows += [(int(it["index"]), f) for it, f in zip(items, features, strict=True)]
    rows.sort(key=lambda r: r[0])
    index = np.array([i for i, _ in rows])
    features = np.full((len(datamodule.samples), rows[0][1].shape[0]), np.nan)
    features[index] = np.stack([f for _, f in rows])
    codes = datamodule.split_codes.copy()
    targets = datamodule.values()[:, 0].copy() if datamodule.target else None
    return Fold(
        targets=targets,
        paths=[str(s.path) for s in datamodule.samples],
        features=features,
        labels=np.array([s.label for s in datamodule.samples]),
        groups=datamodule.groups.copy(),
        codes=codes,
        model=model,
    )


def _pooled(
    folds: Sequence[Fold],
    labels: np.ndarray,
    metric: str,
    codes: Sequence[np.ndarray] | None = None,
    image_order: np.ndarray | None = None,
) -> float:
    """The pooled out-of-fold ``metric`` of every fold refitted under ``labels`` (and
    ``codes`` in place of each fold's own, ``image_order`` for its image features)."""
    truth, probs = [], []
    for i, fold in enumerate(folds):
        with one_thread():
            probs.append(
                fold.fit_and_predict(labels, None if codes is None else codes[i], image_order)
            )
        truth.append(labels[fold.codes == TEST])
    names = folds[0].model.hparams.class_names
    table = metric_table(np.concatenate(truth)[None], np.concatenate(probs)[None], names)
    return float(table[metric][0])


def _test_result(metric: str, observed: float, null: Sequence[float]) -> dict[str, Any]:
    null_arr = np.array(null)
    return {
        "metric": metric,
        "observed": observed,
        "null_mean": float(null_arr.mean()),
        "null_q95": float(np.quantile(null_arr, 0.95)),
        "p_value": (1 + int(np.sum(null_arr >= observed))) / (1 + len(null_arr)),
        "n_permutations": len(null_arr),
        "null": [float(v) for v in null],
    }


def fuses(fold: Fold) -> bool:
    """Whether the fold's model holds image features beside covariates."""
    return 0 < int(fold.model.net.image_dim) < fold.features.shape[1]


def image_permutation_test(
    folds: Sequence[Fold], n_permutations: int = 200, metric: str = "auroc_macro", seed: int = 0
) -> dict[str, Any]:
    """Does the image add anything to the record? A conditional permutation test of a model that
    fuses image features with covariates: the image block of the features (its first
    ``net.image_dim`` columns) is shuffled among the knees while each record stays with its
    label, and the whole fitting procedure (the image weight and strength chosen by inner CV
    included) is repeated on every fold. Under "the image adds nothing to the record" the
    shuffled image carries as much as the real one; ``p = (1 + #{null >= observed}) / (1 + n)``.

    Raises:
        ConfigError: the folds' model does not hold both an image block and covariates.
    """
    d, width = int(folds[0].model.net.image_dim), folds[0].features.shape[1]
    if not fuses(folds[0]):
        raise ConfigError(
            "The image permutation test needs a model that fuses image features with covariates "
            f"(model.covariates with an image network), but this one has {d} image and "
            f"{width - d} other features."
        )
    labels = folds[0].labels
    observed = _pooled(folds, labels, metric)
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_permutations):  # one order for every fold: each knee one foreign image
        order = rng.permutation(len(labels))
        null.append(_pooled(folds, labels, metric, image_order=order))
    result = _test_result(metric, observed, null)
    log.info(
        f"Image permutation test: {metric} {observed:.3f}, p = {result['p_value']:.4f} "
        f"({n_permutations} shuffles of the image features among the knees)."
    )
    return result


def permutation_test(
    folds: Sequence[Fold], n_permutations: int = 200, metric: str = "auroc_macro", seed: int = 0
) -> dict[str, Any]:
    """The pooled out-of-fold ``metric`` under the true labels against ``n_permutations`` runs
    of the whole procedure on labels shuffled between groups (same folds).

    Returns:
        ``{"metric", "observed", "null_mean", "null_q95", "p_value", "n_permutations", "null"}``.
    """
    labels = folds[0].labels
    observed = _pooled(folds, labels, metric)
    null = [
        _pooled(folds, permute_group_labels(labels, folds[0].groups, seed + p), metric)
        for p in range(n_permutations)
    ]
    result = _test_result(metric, observed, null)
    log.info(
        f"Permutation test: {metric} {observed:.3f}, p = {result['p_value']:.4f} "
        f"({n_permutations})."
    )
    return result


def learning_curve(
    folds: Sequence[Fold],
    fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    repeats: int = 3,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The pooled out-of-fold metrics (95 % cluster-bootstrap intervals) when each outer fold's
    head is fitted on a share of its training groups (``repeats`` draws per share, pooled)."""
    names = list(folds[0].model.hparams.class_names)
    points = []
    for fraction in fractions:
        paths, truth, probs = [], [], []
        for r in range(repeats if fraction < 1 else 1):
            for fold in folds:
                codes = subsample_training(
                    fold.codes, fold.labels, fold.groups, fraction, seed + 101 * r
                )
                with one_thread():
                    probs.append(fold.fit_and_predict(fold.labels, codes))
                test = fold.codes == TEST
                truth.append(fold.labels[test])
                paths += [p for p, t in zip(fold.paths, test, strict=True) if t]
        report = cluster_bootstrap_report(
            np.concatenate(truth),
            np.concatenate(probs),
            paths,
            names,
            n_resamples=n_resamples,
            seed=seed,
        )
        kept = [subsample_training(f.codes, f.labels, f.groups, fraction, seed) for f in folds]
        n_train = int(np.mean([(codes == TRAIN).sum() for codes in kept]))
        points.append({"fraction": float(fraction), "n_train": n_train, **report})
    return points
