"""Same config, same seed, same numbers: with augmentation on and with DataLoader workers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from osteolightning.data.sampling import (
    SeededBalanced,
    SeededShuffle,
    WithEpoch,
    item_seed,
    split_key,
)
from osteolightning.train import train

#: a tiny run with the `light` augmentation and two DataLoader worker processes
AUGMENTED = ["debug=tiny", "data/augment=light", "data.num_workers=2", "trainer.max_epochs=2"]
#: metrics.json keys that name the run's own files
OWN_PATHS = ("ckpt_path",)


def _logged_losses(run_dir: Path) -> list[str]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [row["train/loss"] for row in csv.DictReader(handle) if row.get("train/loss")]


def _outputs(run_dir: Path) -> tuple[bytes, bytes, dict, list[str]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return (
        (run_dir / "predictions.csv").read_bytes(),
        (run_dir / "val_predictions.csv").read_bytes(),
        {k: v for k, v in metrics.items() if k not in OWN_PATHS},
        _logged_losses(run_dir),
    )


def test_two_runs_of_one_seed_are_identical_with_augmentation_and_workers(make_cfg):
    first = train(make_cfg("train", AUGMENTED, run="a"))[1]["trainer"].default_root_dir
    second = train(make_cfg("train", AUGMENTED, run="b"))[1]["trainer"].default_root_dir
    a, b = _outputs(Path(first)), _outputs(Path(second))
    assert a[3], "no training loss was logged"
    assert a == b  # predictions.csv, val_predictions.csv and metrics.json byte for byte


def test_another_seed_gives_other_numbers(make_cfg):
    a = train(make_cfg("train", [*AUGMENTED, "trainer.max_epochs=1"], run="a"))[1]
    b = train(make_cfg("train", [*AUGMENTED, "trainer.max_epochs=1", "seed=7"], run="b"))[1]
    losses = [_logged_losses(Path(x["trainer"].default_root_dir)) for x in (a, b)]
    assert losses[0] != losses[1]


def test_the_training_stream_does_not_depend_on_the_worker_count(make_cfg):
    """The batches (order and augmentation) are a function of (seed, epoch, image) alone."""
    from hydra.utils import instantiate

    streams = []
    for workers in (0, 2):
        cfg = make_cfg("train", [*AUGMENTED, f"data.num_workers={workers}"], run=f"w{workers}")
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        epochs = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            epochs.append([(b["index"].tolist(), b["image"].sum().item()) for b in loader])
        streams.append(epochs)
    assert streams[0] == streams[1]
    assert streams[0][0] != streams[0][1]  # each epoch its own order and augmentation


def test_samplers_are_functions_of_seed_and_epoch():
    shuffle = SeededShuffle(50, seed=3)
    first = list(shuffle)
    assert sorted(first) == list(range(50)) and list(shuffle) == first
    shuffle.set_epoch(1)
    assert list(shuffle) != first
    assert list(SeededShuffle(50, seed=4)) != first

    labels = np.array([0] * 40 + [1] * 8 + [2] * 2)
    balanced = SeededBalanced(labels, seed=3)
    draws = list(balanced)
    assert len(draws) == 50 and draws == list(SeededBalanced(labels, seed=3))
    counts = np.bincount(labels[[d for e in range(20) for d in _epoch(balanced, e)]], minlength=3)
    assert counts.min() > 0.25 * counts.sum()  # classes come about equally often

    keyed = WithEpoch(SeededShuffle(5, seed=0))
    keyed.set_epoch(4)
    assert all(epoch == 4 for _, epoch in keyed)
    assert split_key((3, 4)) == (3, 4) and split_key(torch.tensor(3).item()) == (3, 0)
    assert item_seed(0, 1, 2) == item_seed(0, 1, 2) != item_seed(0, 2, 1)


def _epoch(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_of_an_image_is_the_same_in_every_worker(make_cfg, workers):
    from hydra.utils import instantiate

    cfg = make_cfg("train", [*AUGMENTED, f"data.num_workers={workers}"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    once, again = dataset[(0, 5)]["image"], dataset[(0, 5)]["image"]
    assert torch.equal(once, again)
    assert not torch.equal(once, dataset[(0, 6)]["image"])


#: constant learning rate (a schedule's length would depend on max_epochs) and last.ckpt saved
#: at the end of every epoch only
CONTINUABLE = [
    *AUGMENTED,
    "model.scheduler=null",
    "model.net.drop_rate=0.3",
    "callbacks.last_checkpoint.every_n_train_steps=null",  # at each epoch end only
    "callbacks.last_checkpoint.keep_after_finish=true",  # the finished run's state is compared
]


def test_continuing_from_an_end_of_epoch_checkpoint_is_an_uninterrupted_run(make_cfg):
    """Two epochs straight, or one epoch and then a second run from its last.ckpt (the full
    training state, random states included): the same batches, dropout and weights. (Their
    best checkpoints may differ: Lightning keeps the best-so-far only when it continues in the
    same directory, as resume=auto does.)"""
    straight = train(make_cfg("train", CONTINUABLE, run="straight"))[1]
    first = train(make_cfg("train", [*CONTINUABLE, "trainer.max_epochs=1"], run="first"))[1]
    last = Path(first["trainer"].default_root_dir) / "checkpoints" / "last.ckpt"
    continued = train(make_cfg("train", [*CONTINUABLE, f"ckpt_path={last}"], run="second"))[1]
    runs = [Path(x["trainer"].default_root_dir) for x in (straight, continued)]
    weights = [
        torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in runs
    ]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    # the second epoch's logged losses too (the continued run logs only that epoch)
    epoch_1 = [_rows(r, "train/loss", epoch="1") for r in runs]
    assert epoch_1[0] and epoch_1[0] == epoch_1[1]


def _rows(run_dir: Path, key: str, epoch: str) -> list[tuple[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        rows = csv.DictReader(handle)
        return [(r["step"], r[key]) for r in rows if r.get(key) and r["epoch"] == epoch]
