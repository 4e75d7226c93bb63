from collections import Counter

import numpy as np
import pytest

from osteolightning.data.splits import TEST, TRAIN, VAL, assign_splits, group_ids
from osteolightning.errors import ConfigError


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
