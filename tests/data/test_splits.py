from collections import Counter

import numpy as np
import pytest

from osteolightning.data.splits import (
    TEST,
    TRAIN,
    VAL,
    assign_splits,
    group_ids,
    split_warnings,
)
from osteolightning.errors import ConfigError, DataSourceError

CLASSES = ["normal", "osteopenia", "osteoporosis"]


def test_group_ids_merge_patients_and_duplicates():
    keys = [["p:1", "h:a"], ["p:2", "h:b"], ["p:3", "h:a"], ["p:2", "h:c"], [None, "h:d"]]
    assert group_ids(keys).tolist() == [0, 1, 0, 1, 2]


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    patients = np.arange(n) // 2  # two knees per patient
    dup = rng.choice(n, size=20, replace=False)  # plant duplicates: 10 pairs of identical images
    hashes = [f"h{i}" for i in range(n)]
    for a, b in dup.reshape(-1, 2):
        hashes[b] = hashes[a]
    groups = group_ids([[f"p{p}", h] for p, h in zip(patients, hashes, strict=True)])
    return labels, groups


def test_splits_are_grouped_disjoint_covering_and_stratified():
    labels, groups = _data()
    codes = assign_splits(labels, groups, val_fraction=0.15, test_fraction=0.2, seed=3)
    assert set(codes.tolist()) == {TRAIN, VAL, TEST}
    for g in np.unique(groups):  # no group straddles two splits
        assert len(set(codes[groups == g].tolist())) == 1
    share = Counter(codes.tolist())
    assert abs(share[TEST] / len(codes) - 0.2) < 0.05
    assert abs(share[VAL] / len(codes) - 0.15) < 0.05
    overall = np.bincount(labels, minlength=3) / len(labels)
    for split in (TRAIN, VAL, TEST):
        frac = np.bincount(labels[codes == split], minlength=3) / (codes == split).sum()
        assert np.abs(frac - overall).max() < 0.1


def test_splits_are_deterministic_and_seed_dependent():
    labels, groups = _data()
    a = assign_splits(labels, groups, seed=1)
    assert np.array_equal(a, assign_splits(labels, groups, seed=1))
    assert not np.array_equal(a, assign_splits(labels, groups, seed=2))


def test_kfold_test_splits_partition_the_data():
    labels, groups = _data()
    tests = [assign_splits(labels, groups, num_folds=5, fold=k, seed=0) == TEST for k in range(5)]
    assert np.array_equal(np.sum(tests, axis=0), np.ones(len(labels)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"num_folds": 1}, "num_folds"),
        ({"num_folds": 3, "fold": 3}, "fold"),
    ],
)
def test_bad_split_arguments_raise(kwargs, match):
    labels, groups = _data(60)
    with pytest.raises(ConfigError, match=match):
        assign_splits(labels, groups, **kwargs)


def test_too_few_groups_is_a_clear_error():
    with pytest.raises(ConfigError, match="independent image groups"):
        assign_splits([0, 1, 2], [0, 1, 2], test_fraction=0.2)


def test_a_class_without_images_is_named_with_every_count():
    labels = np.array([0] * 20 + [1] * 20)
    with pytest.raises(DataSourceError) as info:
        assign_splits(labels, np.arange(40), class_names=CLASSES)
    message = str(info.value)
    assert "'osteoporosis' has no images" in message
    assert "normal=20, osteopenia=20, osteoporosis=0" in message and "class_names" in message


def test_a_class_too_small_to_split_is_named_with_its_groups():
    labels = np.array([0] * 20 + [1] * 20 + [2] * 4)
    groups = np.r_[np.arange(40), [40, 40, 41, 41]]  # two patients with two knees each
    with pytest.raises(DataSourceError) as info:
        assign_splits(labels, groups, class_names=CLASSES)
    message = str(info.value)
    assert "'osteoporosis' (4 image(s) in 2 independent group(s)" in message
    assert "at least 3" in message and "osteoporosis=4" in message


def test_a_class_missing_from_a_split_is_named():
    # 5 groups of the rare class among 60: the hold-out test split (one of 7 folds) may miss
    # it; a 5-fold CV needs one per fold, so 4 groups fail on every fold
    labels = np.array([0] * 55 + [1] * 5)
    messages = []
    for seed in range(20):
        try:
            assign_splits(labels, np.arange(60), seed=seed, class_names=CLASSES[:2])
        except DataSourceError as err:
            messages.append(str(err))
    assert messages, "no seed left the rare class out of a split"
    assert "Class 'osteopenia' (5 images in 5 independent groups) has no image in" in messages[0]
    with pytest.raises(DataSourceError, match=r"each of the num_folds=5 test folds.*at least 5"):
        assign_splits(labels[:-1], np.arange(59), num_folds=5, class_names=CLASSES[:2])


def test_few_images_per_split_is_a_warning_naming_the_counts():
    codes = np.array([TRAIN] * 6 + [VAL, TEST] + [TRAIN] * 4 + [VAL] * 2 + [TEST] * 2)
    labels = np.array([0] * 8 + [1] * 8)
    warned = split_warnings(codes, labels, CLASSES[:2])
    assert [name for name, _ in warned] == ["normal"]
    assert "train=6, val=1, test=1" in warned[0][1]


def test_without_class_names_labels_are_only_strata():
    labels = np.array([0] * 30 + [1] * 2)  # a rare stratum is fine for segmentation
    codes = assign_splits(labels, np.arange(32))
    assert set(codes.tolist()) == {TRAIN, VAL, TEST}
