"""Samplers and per-image random seeds that make a run's data stream a function of its seed.

The order of the training images and every image's augmentation are drawn from the run's
``seed``, the epoch and the image's index alone, never from a random state that lives in a
process: so two runs of one config give the same batches whatever the number of DataLoader
workers (each worker holds its own copy of the augmentation pipeline, which used to draw the
same sequence in every worker and a different one for every worker count), on every rank of a
DDP run, and after ``resume`` from an end-of-epoch checkpoint.

* :class:`SeededShuffle`: a permutation per epoch from ``(seed, epoch)``;
* :class:`SeededBalanced`: draws with replacement, inverse class frequency, from ``(seed, epoch)``;
* :class:`WithEpoch`: wraps any of them (or a ``DistributedSampler``) and yields
  ``(index, epoch)`` keys, so the dataset can seed the image's augmentation with
  :func:`item_seed`. Lightning calls ``set_epoch`` on the loader's sampler every epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler, Sampler

if TYPE_CHECKING:
    from osteolightning.data.specs import LoaderSpec

#: An item key: the dataset position and the epoch it is drawn in.
Key = tuple[int, int]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one image's augmentation in one epoch (NumPy's ``SeedSequence``, so
    nearby ``(seed, epoch, index)`` give independent streams)."""
    return int(
        np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(index)]).generate_state(1)[0]
    )


def seed_pipeline(augment: Any, seed: int) -> None:
    """Seed an albumentations pipeline for one image: one NumPy and one Python generator from
    ``seed``, shared by its transforms in order (``set_random_state``). Albumentations' own
    ``set_random_seed`` builds two generators per transform: about 80 µs an image, half as much
    as the ``light`` preset's augmentation of a 224-px image; this takes about 20 µs."""
    augment.set_random_state(np.random.Generator(np.random.PCG64(seed)), random.Random(seed))


def split_key(key: int | Key) -> Key:
    """``(index, epoch)`` of a dataset key: a plain index (a loader without :class:`WithEpoch`,
    e.g. evaluation) is epoch 0."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), 0


def _generator(seed: int, epoch: int) -> torch.Generator:
    """The epoch's order stream (two words of entropy: never an image's stream, which has three)."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class SeededShuffle(Sampler[int]):
    """``range(n)`` in a random order drawn from ``(seed, epoch)``.

    Args:
        n: the number of items.
        seed: the run's seed.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=_generator(self.seed, self.epoch)).tolist())


class SeededBalanced(Sampler[int]):
    """``len(labels)`` draws with replacement, each image weighted 1 / its class count, from
    ``(seed, epoch)``: classes come equally often.

    Args:
        labels: ``(N,)`` class index per image.
        seed: the run's seed.
    """

    def __init__(self, labels: Sequence[int], seed: int) -> None:
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        counts = torch.bincount(labels).double()
        self.weights = (1.0 / counts)[labels]
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        draws = torch.multinomial(
            self.weights, len(self.weights), True, generator=_generator(self.seed, self.epoch)
        )
        return iter(draws.tolist())


def _epoch_about_to_run(trainer: Any) -> int:
    """The epoch a loader's next iteration serves: Lightning's ``processed`` epoch count (what it
    passes to ``set_epoch``), which is also right in a run continued from a checkpoint written
    at an epoch's end, where ``current_epoch`` (``completed``) still counts one less."""
    progress = getattr(
        getattr(getattr(trainer, "fit_loop", None), "epoch_progress", None), "current", None
    )
    if progress is not None:
        return int(progress.processed)
    return int(trainer.current_epoch)


class WithEpoch(Sampler[Key]):
    """Yields ``(index, epoch)`` for every index of ``sampler``; forwards ``set_epoch``.

    Lightning calls ``set_epoch`` at the start of each epoch, but a loader with worker
    processes starts drawing indices when its iterator is made, which Lightning does *before*
    ``set_epoch`` in the first epoch of a resumed run. So when ``clock`` (the trainer) is given,
    the epoch is read from its ``current_epoch`` whenever an epoch's iteration starts.

    Args:
        sampler: any sampler of dataset positions.
        clock: an object with a ``current_epoch`` attribute (the Lightning trainer), or None.
    """

    def __init__(self, sampler: Sampler[int] | Any, clock: Any = None) -> None:
        self.sampler, self.clock, self.epoch = sampler, clock, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Key]:
        if self.clock is not None:
            self.set_epoch(_epoch_about_to_run(self.clock))
        epoch = self.epoch
        return ((int(i), epoch) for i in self.sampler)


def train_sampler(
    dataset: Any, kind: str | None, seed: int, world: int, rank: int, clock: Any
) -> Sampler:
    """The training order, drawn from ``(seed, epoch)``: a shuffle (``kind=None``) or balanced
    draws (``"balanced"``); under DDP (``world > 1``) each rank takes its share (every rank
    draws the same list first). ``clock`` (the trainer) tells the epoch."""
    if kind == "balanced":
        inner: Sampler = SeededBalanced(dataset.labels, seed)
        if world > 1:
            inner = DistributedSamplerWrapper(inner, num_replicas=world, rank=rank, shuffle=False)
    elif world > 1:
        inner = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=seed)
    else:
        inner = SeededShuffle(len(dataset), seed)
    return WithEpoch(inner, clock=clock)


def make_loader(dataset: Any, spec: LoaderSpec, train: bool, trainer: Any = None) -> DataLoader:
    """The DataLoader of one split.

    Args:
        dataset: the split's dataset.
        spec: batch size, workers, pinning, sampler, ``drop_last`` and the run's seed.
        train: the training loader (its order drawn by :func:`train_sampler`; else in order).
        trainer: the Lightning trainer (world size, rank, epoch), or ``None``.
    """
    world = trainer.world_size if trainer is not None else 1
    if train:
        rank = trainer.global_rank if world > 1 else 0
        sampler: Sampler | None = train_sampler(
            dataset, spec.sampler, spec.seed, world, rank, clock=trainer
        )
    elif world > 1:
        # every image exactly once across ranks (no padding duplicates), so synced test
        # metrics equal a 1-device run
        sampler = UnrepeatedDistributedSampler(
            dataset, num_replicas=world, rank=trainer.global_rank, shuffle=False
        )
    else:
        sampler = None
    return DataLoader(
        dataset,
        batch_size=spec.batch_size,
        sampler=sampler,
        num_workers=spec.num_workers,
        pin_memory=spec.pin_memory,
        persistent_workers=spec.num_workers > 0,
        # A last batch of one image breaks BatchNorm in training mode.
        drop_last=train and spec.drop_last and len(dataset) > spec.batch_size,
        # the workers' base seed from the loader's own generator, not the global one, so
        # making a loader draws nothing from the stream that dropout and mixup use
        generator=torch.Generator().manual_seed(spec.seed),
    )
