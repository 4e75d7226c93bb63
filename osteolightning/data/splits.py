"""Leakage-free, stratified train/val/test assignment.

Images are first merged into *groups*: all images of one patient, and all byte-identical
copies of one image, belong to one group (union-find over both keys). Groups, never single
images, are assigned to splits, so no patient and no duplicate ever straddles a split.

Given the class names, the split is checked: a class without images, a class of fewer than
three independent groups, or a class that ends up missing from a split is an error naming the
class and its counts; fewer than :data:`MIN_PER_CLASS_PER_SPLIT` images of a class in a split
is a warning (:func:`split_warnings`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from osteolightning.errors import ConfigError, DataSourceError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2
#: Fewer images of a class than this in a split make its per-class numbers meaningless (warned).
MIN_PER_CLASS_PER_SPLIT = 2


def group_ids(keys_per_sample: Sequence[Sequence[str | None]]) -> np.ndarray:
    """Merge samples that share any key into one group.

    Args:
        keys_per_sample: for each sample, its keys (e.g. ``["patient:P1", "sha1:ab12..."]``);
            ``None`` entries are ignored.

    Returns:
        ``(N,)`` int64 group index per sample, numbered by first appearance.

    Example:
        >>> group_ids([["p:1", "h:a"], ["p:2", "h:a"], ["p:3", "h:b"]]).tolist()
        [0, 0, 1]
    """
    parent = list(range(len(keys_per_sample)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, keys in enumerate(keys_per_sample):
        for key in keys:
            if key is None:
                continue
            if key in owner:
                parent[find(i)] = find(owner[key])
            else:
                owner[key] = i
    roots = [find(i) for i in range(len(parent))]
    numbering: dict[int, int] = {}
    return np.array([numbering.setdefault(r, len(numbering)) for r in roots], dtype=np.int64)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(
            f"Expected argument `{name}` to be a float in the (0, 1) range, but got {value}."
        )


def _one_fold(
    labels: np.ndarray, groups: np.ndarray, n_splits: int, fold: int, seed: int
) -> np.ndarray:
    """Boolean mask of fold ``fold`` of a stratified, grouped ``n_splits``-fold partition."""
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ConfigError(
            f"Cannot split {n_groups} independent image groups into {n_splits} folds; "
            "use more images or smaller split fractions."
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class ...": checked and named by us
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = list(splitter.split(np.zeros(len(labels)), labels, groups))
    for k, (_, held_out) in enumerate(folds):
        if k == fold:
            mask = np.zeros(len(labels), dtype=bool)
            mask[held_out] = True
            return mask
    raise ConfigError(f"Expected argument `fold` to be in [0, {n_splits - 1}], but got {fold}.")


def assign_splits(
    labels: Sequence[int],
    groups: Sequence[int],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    num_folds: int | None = None,
    fold: int = 0,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Assign each sample to train (0), val (1) or test (2), stratified by label, grouped.

    Without ``num_folds`` the test split is one fold of ``round(1 / test_fraction)`` folds.
    With ``num_folds=K`` the test split is fold ``fold`` of a K-fold partition (cross-validation).
    Validation is then one fold, of about ``val_fraction`` of all images, carved from the rest.

    Args:
        labels: ``(N,)`` class index per sample.
        groups: ``(N,)`` group index per sample (see :func:`group_ids`).
        val_fraction: approximate share of images for validation.
        test_fraction: approximate share of images for testing (ignored with ``num_folds``).
        seed: makes the assignment deterministic.
        num_folds: number of cross-validation folds, or ``None`` for a single hold-out split.
        fold: which fold is the test split when ``num_folds`` is set.
        class_names: the classes the labels index (classification); when given, every class
            must have images and be in every split (see :func:`check_class_counts`). ``None``:
            the labels are only strata (segmentation).

    Returns:
        ``(N,)`` int64 split code per sample.

    Raises:
        ConfigError: on fractions outside (0, 1) or too few groups for the requested folds.
        DataSourceError: (with ``class_names``) a class without images, with fewer than three
            independent groups, or missing from a split; the message names it and its counts.
    """
    labels_arr = np.asarray(labels)
    groups_arr = np.asarray(groups)
    _check_fraction("val_fraction", val_fraction)
    if num_folds is None:
        _check_fraction("test_fraction", test_fraction)
        n_test_splits, test_fold = max(2, round(1.0 / test_fraction)), 0
        rest_share = 1.0 - test_fraction
    else:
        if num_folds < 2:
            raise ConfigError(
                f"Expected argument `num_folds` to be an integer >= 2, but got {num_folds}."
            )
        n_test_splits, test_fold = num_folds, fold
        rest_share = 1.0 - 1.0 / num_folds
    if class_names is not None:
        check_class_counts(labels_arr, groups_arr, class_names, num_folds)
    codes = np.full(len(labels_arr), TRAIN, dtype=np.int64)
    test_mask = _one_fold(labels_arr, groups_arr, n_test_splits, test_fold, seed)
    codes[test_mask] = TEST
    rest = np.flatnonzero(~test_mask)
    n_val_splits = max(2, round(rest_share / val_fraction))
    val_in_rest = _one_fold(labels_arr[rest], groups_arr[rest], n_val_splits, 0, seed + 1)
    codes[rest[val_in_rest]] = VAL
    if class_names is not None:
        _check_every_split(codes, labels_arr, groups_arr, class_names, num_folds)
    return codes


def _counts(labels: np.ndarray, class_names: Sequence[str]) -> str:
    per_class = np.bincount(labels, minlength=len(class_names))
    return ", ".join(f"{c}={int(n)}" for c, n in zip(class_names, per_class, strict=False))


def check_class_counts(
    labels: np.ndarray,
    groups: np.ndarray,
    class_names: Sequence[str],
    num_folds: int | None = None,
) -> None:
    """Every class needs images, in at least three independent groups (one per split) and, with
    ``num_folds``, at least one per fold (each fold is a test split once).

    Raises:
        DataSourceError: naming the first class that has none or too few, with every count.
    """
    needed = max(len(SPLIT_NAMES), num_folds or 0)
    for c, name in enumerate(class_names):
        members = labels == c
        n_groups = len(np.unique(groups[members]))
        if n_groups == 0:
            raise DataSourceError(
                f"Class '{name}' has no images (images per class: "
                f"{_counts(labels, class_names)}). Every class of class_names needs images to "
                f"train and test on: add images of it, or leave it out of class_names."
            )
        if n_groups < needed:
            folds = f" and each of the num_folds={num_folds} test folds" if num_folds else ""
            raise DataSourceError(
                f"Cannot split class '{name}' ({int(members.sum())} image(s) in {n_groups} "
                f"independent group(s): a patient's images and copies of an image form one) "
                f"into train, val and test{folds}: each needs at least one group of every "
                f"class, so at least {needed}. Images per class: "
                f"{_counts(labels, class_names)}. Add images of it, "
                + ("use fewer folds, " if num_folds else "")
                + "or leave it out of class_names."
            )


def _check_every_split(
    codes: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    class_names: Sequence[str],
    num_folds: int | None,
) -> None:
    for c, name in enumerate(class_names):
        per_split = [int(((codes == s) & (labels == c)).sum()) for s in range(len(SPLIT_NAMES))]
        missing = [SPLIT_NAMES[s] for s, n in enumerate(per_split) if n == 0]
        if missing:
            shown = ", ".join(f"{s}={n}" for s, n in zip(SPLIT_NAMES, per_split, strict=True))
            folds = f"num_folds={num_folds}" if num_folds else "the split fractions"
            raise DataSourceError(
                f"Class '{name}' ({sum(per_split)} images in "
                f"{len(np.unique(groups[labels == c]))} independent groups) has no image in "
                f"{' and '.join(missing)} ({shown}): with {folds} it has too few groups to "
                f"reach every split. Add images of it, use fewer folds or larger "
                f"data.val_fraction / data.test_fraction, or leave it out of class_names."
            )


def split_warnings(
    codes: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> list[tuple[str, str]]:
    """Classes with fewer than :data:`MIN_PER_CLASS_PER_SPLIT` images in a split.

    Returns:
        ``(class name, message)`` per such class; the message names its count in every split.

    Example:
        >>> split_warnings(np.array([0, 0, 1, 2]), np.array([0, 0, 0, 0]), ["a"])[0][0]
        'a'
    """
    out = []
    for c, name in enumerate(class_names):
        per_split = [int(((codes == s) & (labels == c)).sum()) for s in range(len(SPLIT_NAMES))]
        if min(per_split) < MIN_PER_CLASS_PER_SPLIT:
            shown = ", ".join(f"{s}={n}" for s, n in zip(SPLIT_NAMES, per_split, strict=True))
            out.append(
                (
                    name,
                    f"class '{name}' has fewer than {MIN_PER_CLASS_PER_SPLIT} images in a split "
                    f"({shown}): its validation and test numbers rest on one image and mean "
                    f"little. Add images, or use cross-validation (data.num_folds).",
                )
            )
    return out


#: The split code of an image a run must not see at all: an outer test fold under nested
#: cross-validation, or training images left out for a learning curve.
EXCLUDED = 3


def split_name(code: int) -> str:
    """``train``, ``val``, ``test`` or ``excluded``."""
    return "excluded" if code == EXCLUDED else SPLIT_NAMES[code]


def assign_nested_splits(
    labels: Sequence[int],
    groups: Sequence[int],
    num_folds: int,
    fold: int,
    inner_folds: int,
    inner_fold: int,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """An inner split of nested cross-validation: the outer test fold ``fold`` of
    ``num_folds`` is :data:`EXCLUDED` (the run never sees it), the inner fold ``inner_fold`` of
    ``inner_folds`` of the rest is the test split, and validation is carved from what remains.

    The outer folds are those of :func:`assign_splits` with the same ``num_folds`` and
    ``seed``, so the outer run of a fold and its inner runs agree on its test images.

    Returns:
        ``(N,)`` int64 split codes (train, val, test, excluded).

    Raises:
        ConfigError: a fold outside its range, too few groups.
    """
    labels_arr, groups_arr = np.asarray(labels), np.asarray(groups)
    if inner_folds < 2 or not 0 <= inner_fold < inner_folds:
        raise ConfigError(
            f"Expected `data.inner_fold` in [0, {inner_folds - 1}] with data.inner_folds >= 2, "
            f"but got inner_fold={inner_fold}, inner_folds={inner_folds}."
        )
    outer = _one_fold(labels_arr, groups_arr, num_folds, fold, seed)
    codes = np.full(len(labels_arr), EXCLUDED, dtype=np.int64)
    rest = np.flatnonzero(~outer)
    inner = assign_splits(
        labels_arr[rest],
        groups_arr[rest],
        val_fraction=val_fraction,
        seed=seed + 7,
        num_folds=inner_folds,
        fold=inner_fold,
    )
    codes[rest] = inner
    return codes


def subsample_training(
    codes: np.ndarray, labels: Sequence[int], groups: Sequence[int], fraction: float, seed: int
) -> np.ndarray:
    """Keep about ``fraction`` of the training images (whole groups, stratified by label);
    the others become :data:`EXCLUDED` (a point of a learning curve). Validation and test are
    unchanged."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"Expected argument `train_fraction` in (0, 1], but got {fraction}.")
    codes = codes.copy()
    if fraction == 1:
        return codes
    labels_arr, groups_arr = np.asarray(labels), np.asarray(groups)
    rng = np.random.default_rng(seed)
    train = np.flatnonzero(codes == TRAIN)
    for label in np.unique(labels_arr[train]):
        own = np.unique(groups_arr[train][labels_arr[train] == label])
        keep = rng.choice(own, size=max(1, round(fraction * len(own))), replace=False)
        drop = train[(labels_arr[train] == label) & ~np.isin(groups_arr[train], keep)]
        codes[drop] = EXCLUDED
    return codes


def permute_group_labels(labels: Sequence[int], groups: Sequence[int], seed: int) -> np.ndarray:
    """The labels shuffled between groups, for a permutation test: groups of equal size trade
    their label lists (a patient's two knees move together, with their own labels), so the
    images and the folds stay and only the link between them and the labels goes.

    Example:
        >>> permute_group_labels([0, 0, 1, 2], [0, 0, 1, 2], seed=0).tolist()[:2]  # one group
        [0, 0]
    """
    labels_arr, groups_arr = np.asarray(labels), np.asarray(groups)
    out = labels_arr.copy()
    rng = np.random.default_rng(seed)
    members = {g: np.flatnonzero(groups_arr == g) for g in np.unique(groups_arr).tolist()}
    by_size: dict[int, list[int]] = {}
    for g, rows in members.items():
        by_size.setdefault(len(rows), []).append(g)
    for same in by_size.values():
        donors = rng.permutation(len(same))
        for g, d in zip(same, donors, strict=True):
            out[members[g]] = labels_arr[members[same[d]]]
    return out


def assign_given_splits(
    labels: Sequence[int],
    groups: Sequence[int],
    given: Sequence[int],
    val_fraction: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """A split its source gives (a data set published as ``train/`` and ``val/`` folders):
    the given test images stay the test split, validation is carved from the given training
    images (stratified, grouped, about ``val_fraction`` of them).

    Args:
        labels: ``(N,)`` class indices (the strata).
        groups: ``(N,)`` group ids (patients, copies).
        given: ``(N,)`` :data:`TRAIN` or :data:`TEST` per image.
        val_fraction: the validation share of the given training images.
        seed: the validation fold's seed.

    Returns:
        ``(N,)`` int64 split codes.

    Raises:
        ConfigError: a bad fraction, too few training groups.
    """
    _check_fraction("val_fraction", val_fraction)
    labels_arr, groups_arr = np.asarray(labels), np.asarray(groups)
    codes = np.asarray(given, dtype=np.int64).copy()
    train = np.flatnonzero(codes == TRAIN)
    n_val = max(2, round(1.0 / val_fraction))
    val = _one_fold(labels_arr[train], groups_arr[train], n_val, 0, seed + 1)
    codes[train[val]] = VAL
    return codes


def crossing_groups(groups: Sequence[int], given: Sequence[int]) -> list[int]:
    """The groups (a patient, a set of copies) whose images sit in more than one given split."""
    groups_arr, given_arr = np.asarray(groups), np.asarray(given)
    return [int(g) for g in np.unique(groups_arr) if len(np.unique(given_arr[groups_arr == g])) > 1]


def split_codes(
    strata: np.ndarray,
    groups: np.ndarray,
    split_args: dict,
    nested: dict,
    train_fraction: float = 1.0,
    given: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """A DataModule's split codes: the source's given split (:func:`assign_given_splits`),
    hold-out or K-fold (:func:`assign_splits`), or an inner split of nested cross-validation
    (:func:`assign_nested_splits`); then, for a learning curve, a share of the training groups.

    Args:
        strata: ``(N,)`` labels (or zeros).
        groups: ``(N,)`` group ids.
        split_args: ``val_fraction``, ``test_fraction``, ``seed``, ``num_folds``, ``fold``.
        nested: ``inner_folds`` (``None``: not nested) and ``inner_fold``.
        train_fraction: the share of training groups kept.
        given: ``(N,)`` codes the source gives, or ``None``.
        class_names: the task's classes (checked: each in every split), or ``None``.

    Raises:
        ConfigError: cross-validation asked for on a data set with a given split.
    """
    args = split_args
    if given is not None:
        if args.get("num_folds") is not None or nested.get("inner_folds") is not None:
            raise ConfigError(
                "The data set comes with its own split (train and test folders), so "
                "data.num_folds / data.inner_folds cannot re-split it: leave them null, or read "
                "the folders as one class-folder tree (data=folder)."
            )
        codes = assign_given_splits(strata, groups, given, args["val_fraction"], args["seed"])
    elif nested.get("inner_folds") is not None:
        codes = assign_nested_splits(
            strata,
            groups,
            int(args["num_folds"]),
            int(args["fold"]),
            int(nested["inner_folds"]),
            int(nested["inner_fold"]),
            val_fraction=args["val_fraction"],
            seed=int(args["seed"]),
        )
    else:
        codes = assign_splits(strata, groups, **args, class_names=class_names)
    if train_fraction < 1:
        codes = subsample_training(codes, strata, groups, train_fraction, int(args["seed"]) + 11)
    return codes
