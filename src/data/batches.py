"""Batches cut from whole tensors by index: no per-sample work, no worker processes.

`EpochBatches` decides which indices form each batch on this rank in a given epoch;
`TensorBatchLoader` gathers those rows from the tensors. Lightning accepts any sized iterable
as a dataloader and calls `loader.sampler.set_epoch(epoch)` before each training epoch, so the
shuffle order is a pure function of (seed, epoch): it is the same after a resume. (A loop of one's
own that never calls it gets the next epoch on each pass.) The loader's `state_dict` says how far
into its epoch it got, so a run resumed from a mid-epoch checkpoint continues with the next batch
of that epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch


def validation_split(count: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation indices, training indices) of a training set of `count` images. A fixed split seed keeps the
    validation set identical across runs with different `seed`s, so a sweep compares models on the same images."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    return order[:val_size], order[val_size:]


class EpochBatches:
    """Index batches for one rank.

    Shuffled (training): a fresh permutation of all samples each epoch, dealt round-robin to the
    ranks and cut to the same length on every rank, so all ranks take the same number of steps. A last
    batch of a single image is left out (another image each epoch): batch norm cannot train on one.
    Not shuffled (evaluation): ranks get disjoint strided shards covering every sample exactly once.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.epoch_was_set = False  # since the loader's last pass: Lightning sets every epoch, a loop of one's own not

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epoch_was_set = True

    def _rank_size(self) -> int:
        if self.shuffle:
            return self.num_samples // self.world_size
        return len(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        size = self._rank_size()
        if self.drop_last or (self.shuffle and size % self.batch_size == 1 and size > 1):
            return size // self.batch_size
        return math.ceil(size / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, in order."""
        if self.shuffle:
            # SeedSequence mixes (seed, epoch) properly: seed 0/epoch 1 and seed 1/epoch 0 differ.
            epoch_seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(epoch_seed))
            return order[self.rank :: self.world_size][: self._rank_size()]
        return torch.arange(self.rank, self.num_samples, self.world_size)

    def batches(self, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
        """This epoch's index batches, on `device`: one copy for the whole epoch, not one per batch."""
        return self.indices().to(device).split(self.batch_size)[: len(self)]


class TensorBatchLoader:
    """Yields `(tensor_0[idx], tensor_1[idx], ...)` for each index batch of `sampler`."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], sampler: EpochBatches) -> None:
        if any(len(t) != sampler.num_samples for t in tensors):
            raise ValueError("all tensors must have sampler.num_samples rows")
        self.tensors = tensors
        self.sampler = sampler  # the attribute name Lightning looks for to call set_epoch
        self.batch_sampler = None  # Lightning reads this beside `sampler`; batching is the sampler's job here
        self.position = {"epoch": sampler.epoch, "batches": 0}  # batches handed out so far in that epoch
        self._resume_position: dict | None = None
        self._passes = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def continue_after(self, earlier: TensorBatchLoader) -> None:
        """Iterate as `earlier` would next: a new loader per epoch shuffles as one loader iterated again does."""
        self.sampler.epoch, self._passes = earlier.sampler.epoch, earlier._passes

    def state_dict(self) -> dict:
        return dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        """Skip the batches `state` counts in the next iteration, if that iteration is of `state`'s epoch."""
        self._resume_position = dict(state)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # A generator: nothing below runs until the first batch is asked for, which Lightning does only
        # after `set_epoch`, so the epoch compared here is the one being iterated.
        resume, self._resume_position = self._resume_position, None
        if self._passes and not self.sampler.epoch_was_set:
            # Iterated again without set_epoch (a loop of one's own): the next epoch, so each pass is shuffled anew,
            # as a DataLoader(shuffle=True) is.
            self.sampler.epoch += 1
        self.sampler.epoch_was_set = False
        self._passes += 1
        start = resume["batches"] if resume is not None and resume["epoch"] == self.sampler.epoch else 0
        self.position = {"epoch": self.sampler.epoch, "batches": start}
        for idx in self.sampler.batches(self.tensors[0].device)[start:]:
            self.position["batches"] += 1
            yield tuple(t[idx] for t in self.tensors)
