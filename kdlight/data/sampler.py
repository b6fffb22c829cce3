"""The training order: a seeded permutation per epoch, sharded by rank, resumable mid-epoch.

The order of epoch e is a permutation seeded by (seed, e), the same for every method, so
comparisons see the same data. The sampler counts its passes itself: each pass over the data
(each iterator that hands out an index) is the next epoch. Lightning's own epoch number is not
used: after a run resumed from a checkpoint taken at the end of an epoch, Lightning 2.6 counts
one epoch as started fewer than it has, and a second such resume then replays an epoch's order
(found by a run requeued twice by SLURM: tests/test_resume.py). Resuming goes through torchdata's
`StatefulDataLoader`, whose state Lightning saves in every checkpoint: the sampler and its
iterator implement the `Stateful` protocol (`state_dict` / `load_state_dict`), so a resumed run
continues at the next example of the interrupted epoch, or starts the next epoch when the
interrupted one had been handed out whole.

Under DDP each rank takes its slice of every global batch (`batch_size` x world size): rank r gets
positions [r·b, (r+1)·b) of each global batch. With more than one rank only complete global
batches are used, so every rank runs the same steps with the same batch size (collective
operations, a sharded teacher among them, never wait forever).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The permutation of epoch `epoch` (every method of a comparison sees the same one)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


class EpochSampler(Sampler[int]):
    """This rank's example indices for the current epoch, in batch order.

    Args:
        size: number of training examples.
        batch_size: examples per batch per rank.
        seed: data-order seed.
        rank, world_size: this process among the training processes.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.next_epoch = 0  # the epoch of the next pass

    def start_at(self, epoch: int) -> None:
        """Make the next pass epoch `epoch` (a loader of its own that looks at a given epoch)."""
        self.next_epoch = epoch

    def num_batches(self) -> int:
        if self.world_size == 1:
            return -(-self.size // self.batch_size)
        return self.size // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.size
        return self.num_batches() * self.batch_size

    def indices(self, epoch: int) -> list[int]:
        order = epoch_order(self.size, self.seed, epoch)
        if self.world_size == 1:
            return order
        width = self.batch_size * self.world_size
        start = self.rank * self.batch_size
        return [i for b in range(self.num_batches())
                for i in order[b * width + start: b * width + start + self.batch_size]]

    def __iter__(self) -> Iterator[int]:
        return _EpochIterator(self)

    def state_dict(self) -> dict[str, Any]:
        return {"next_epoch": self.next_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "next_epoch" in state:
            self.next_epoch = state["next_epoch"]
        else:  # written before the sampler counted its passes: the epoch in progress, and whether it ended
            self.next_epoch = state["epoch"] + (1 if state.get("finished") else 0)


class _EpochIterator(Iterator[int]):
    """One pass over an epoch; its state is the epoch and how many indices it has handed out. The
    epoch is fixed at the first index asked for, so an iterator made and dropped unused (as a loop
    may do around a restart) takes no epoch."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler
        self.epoch: int | None = None
        self.order: list[int] = []
        self.yielded = 0
        self._resume: tuple[int, int] | None = None

    def _start(self) -> None:
        if self._resume is not None:
            epoch, yielded = self._resume
            if yielded < len(self.sampler):
                self.yielded = yielded  # continue the interrupted epoch
            else:
                epoch += 1  # saved after the epoch's last index: the next epoch, from its beginning
            self._resume = None
        else:
            epoch = self.sampler.next_epoch
        self.epoch = epoch
        self.sampler.next_epoch = epoch + 1
        self.order = self.sampler.indices(epoch)

    def __next__(self) -> int:
        if self.epoch is None:
            self._start()
        if self.yielded >= len(self.order):
            raise StopIteration
        self.yielded += 1
        return self.order[self.yielded - 1]

    def state_dict(self) -> dict[str, Any]:
        if self.epoch is None:  # nothing handed out yet: a restored position, or the next epoch's start
            epoch, yielded = self._resume if self._resume is not None else (self.sampler.next_epoch, 0)
            return {"epoch": epoch, "yielded": yielded}
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.yielded = None, 0
        self._resume = (state["epoch"], state["yielded"])
