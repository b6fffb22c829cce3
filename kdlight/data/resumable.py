"""A training loader that resumes mid-epoch exactly where an interrupted run stopped.

The order of epoch e is a permutation seeded by (seed, e), the same for every method, so
comparisons see the same data order. The loader's state (saved by Lightning in each checkpoint)
is the epoch and the number of batches the training loop has *processed* in it, read from the
trainer's progress: Lightning prefetches one batch ahead, so counting batches handed out would
skip one on resume. Under DDP, each rank takes its slice of every global batch (the sampler does
the sharding, so Lightning's DistributedSampler is turned off: `use_distributed_sampler: false`).
With more than one rank only complete global batches are used, so every rank runs the same steps
with the same batch size (collective operations, a sharded teacher among them, never wait forever).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a seeded per-epoch permutation; `skip` batches are left out once, after a resume.

    Args:
        size: number of examples.
        batch_size: examples per batch per rank.
        seed: data-order seed.
        epoch: returns the current epoch (the trainer's).
        rank: returns (rank, world size).
    """

    def __init__(self, size: int, batch_size: int, seed: int, epoch: Callable[[], int],
                 rank: Callable[[], tuple[int, int]] = lambda: (0, 1)):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.rank = epoch, rank
        self.skip = 0

    def __len__(self) -> int:
        _, world = self.rank()
        batches = self.size / (self.batch_size * world)
        return math.ceil(batches) if world == 1 else math.floor(batches)

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = self.rank()
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch()))
        global_batch = self.batch_size * world
        skip, self.skip = self.skip, 0
        for index in range(skip, len(self)):
            start = index * global_batch + rank * self.batch_size
            yield order[start: start + self.batch_size].tolist()


class ResumableLoader(DataLoader):
    """A DataLoader whose `state_dict` lets Lightning resume it mid-epoch (its `_Stateful` protocol)."""

    def __init__(self, dataset, batch_sampler: EpochBatchSampler, processed: Callable[[], int], **kwargs):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self.processed = processed

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch(), "processed": self.processed()}

    def load_state_dict(self, state: dict) -> None:
        if state["epoch"] == self.batch_sampler.epoch():
            self.batch_sampler.skip = state["processed"]
