"""The training order: a seeded permutation per epoch, sharded by rank, resumable mid-epoch.

The order of epoch e is a permutation seeded by (seed, e), the same for every method, so
comparisons see the same data. Lightning tells the sampler the epoch (`set_epoch`, as it does
for PyTorch's DistributedSampler). Resuming goes through torchdata's `StatefulDataLoader`, whose
state Lightning saves in every checkpoint: the sampler and its iterator implement the `Stateful`
protocol (`state_dict` / `load_state_dict`), so a resumed run continues at the next example of
the interrupted epoch. The permutation is drawn lazily, at the first index asked for, so the
epoch Lightning sets after restoring a checkpoint is the one used.

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
        self.epoch = 0
        self.finished_epoch: int | None = None  # the last epoch whose pass ran to its end

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

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
        return {"epoch": self.epoch, "finished": self.finished_epoch == self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Saved after the epoch's last batch: what comes next is the next epoch. (The loader may
        # ask for indices before Lightning sets the epoch: with worker processes it does.)
        self.epoch = state["epoch"] + (1 if state.get("finished") else 0)


class _EpochIterator(Iterator[int]):
    """One pass over an epoch; its state is the epoch and how many indices it has handed out."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler
        self.epoch: int | None = None  # drawn lazily (see the module docstring)
        self.order: list[int] = []
        self.yielded = 0
        self._resume: tuple[int, int] | None = None

    def _start(self) -> None:
        epoch = self.sampler.epoch
        if self._resume is not None and self._resume[0] == epoch:
            if self._resume[1] < len(self.sampler):
                self.yielded = self._resume[1]  # continue the interrupted epoch
            else:
                # Saved at the end of an epoch: start the next one. (With worker processes the loader
                # asks for indices before Lightning sets the new epoch.)
                epoch += 1
        self._resume = None
        self.epoch = epoch
        self.order = self.sampler.indices(epoch)

    def __next__(self) -> int:
        if self.epoch is None:
            self._start()
        if self.yielded >= len(self.order):
            self.sampler.finished_epoch = self.epoch
            raise StopIteration
        self.yielded += 1
        return self.order[self.yielded - 1]

    def state_dict(self) -> dict[str, Any]:
        epoch = self.sampler.epoch if self.epoch is None else self.epoch
        return {"epoch": epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.yielded = None, 0
        self._resume = (state["epoch"], state["yielded"])
