"""The protocol every training batch sampler follows, so the training loop treats them alike.

Batches are lists of items ((index, flip) pairs, or richer tuples) whose content depends only on
(seed, epoch, batch) and, for a sampler that adapts, on the state it returns from `state_dict()`:
a run resumed from a checkpoint sees the same batches as the uninterrupted one.

Multi-process runs: `batch_size` is the GLOBAL batch; every rank draws the same global batches and
yields its share of each (batch_size / world_size items), so the ranks' shares together are the
world-size-1 batch.
"""

import numpy as np
from torch.utils.data import Sampler


def rank_share(batch_size: int, rank: int, world_size: int) -> slice:
    """The items [rank·b, (rank+1)·b) of a global batch, b = batch_size / world_size (must
    divide)."""
    if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not split over rank {rank} of {world_size} "
                         "processes")
    share = batch_size // world_size
    return slice(rank * share, (rank + 1) * share)


class ResumableBatchSampler(Sampler):
    """What the loop relies on in every batch sampler:

    - an epoch of num_samples // batch_size batches, so step -> (epoch, batch) is one formula;
    - `set_position(epoch, batch)` to resume mid-epoch, and `__len__` = the batches left in the
      current epoch;
    - `feedback(batch_index, correct)`: which images of a batch the model got right, for samplers
      that adapt to it (`wants_feedback` True: the loop computes correctness only for those);
    - `state_dict()` / `load_state_dict(state)`: what a checkpoint must keep beyond
      (seed, epoch, batch); empty for a sampler that depends on nothing else.
    Subclasses set the four attributes and `__iter__`.
    """

    num_samples: int
    batch_size: int
    epoch: int = 0
    start_batch: int = 0
    wants_feedback: bool = False

    def set_position(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return self.num_samples // self.batch_size - self.start_batch

    def feedback(self, batch_index: int, correct: np.ndarray) -> None:
        """`correct` [batch_size] bool of (global) batch `batch_index` of this epoch; ignored here
        (the batches depend on (seed, epoch, batch) alone)."""

    def state_dict(self) -> dict:
        """Nothing beyond (seed, epoch, batch) decides the batches: an empty state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (see state_dict)."""
