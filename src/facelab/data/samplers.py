"""Batch samplers whose order depends only on (seed, epoch), so a resumed run sees the same batches.

Multi-process runs (COMMON per-rank convention): `batch_size` is the GLOBAL batch; with `rank` and
`world_size` every rank draws the same global batches and yields its contiguous share of each
(batch_size / world_size items, rank order), so the ranks' shares together are the world-size-1 batch.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def rank_share(batch_size: int, rank: int, world_size: int) -> slice:
    """The items [rank·b, (rank+1)·b) of a global batch, b = batch_size / world_size (must divide)."""
    if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not split over rank {rank} of {world_size} processes")
    share = batch_size // world_size
    return slice(rank * share, (rank + 1) * share)


class ResumableBatchSampler(Sampler):
    """What the loop relies on in every batch sampler: an epoch of num_samples // batch_size batches
    (so step -> (epoch, batch) is one formula), `set_position(epoch, batch)` to resume mid-epoch, and
    `__len__` = the batches left in the current epoch. Subclasses set the four attributes and `__iter__`."""

    num_samples: int
    batch_size: int
    epoch: int = 0
    start_batch: int = 0

    def set_position(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return self.num_samples // self.batch_size - self.start_batch


class EpochBatchSampler(ResumableBatchSampler):
    """Shuffled batches of (index, flip) items; drop_last. `set_position(epoch, batch)` resumes mid-epoch."""

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, flip: bool = True, rank: int = 0, world_size: int = 1
    ) -> None:
        if num_samples < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training images")
        self.num_samples, self.batch_size, self.seed, self.flip = num_samples, batch_size, seed, flip
        self.share = rank_share(batch_size, rank, world_size)
        self.epoch, self.start_batch = 0, 0

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples)
        flips = rng.random(self.num_samples) < 0.5 if self.flip else np.zeros(self.num_samples, bool)
        for b in range(self.start_batch, self.num_samples // self.batch_size):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield [(int(i), bool(f)) for i, f in zip(order[sl], flips[sl], strict=True)][self.share]


class AdaptiveBatchSampler(ResumableBatchSampler):
    """AdaptiveFace's Adaptive Data Sampling (Liu et al. 2019, Sec. 3.3): images are drawn with probability
    proportional to a per-image weight that the trainer's feedback raises for misclassified images and
    lowers for correct ones, so training dwells on the hard ones.

    Feedback (`feedback(batch, correct)`, batch = the batch number in the epoch): w_i ← clip(w_i·up) for a
    misclassified image, clip(w_i·down) for a correct one, clip to [min_weight, max_weight] (weights start
    at 1; the bounds keep label noise from taking over and easy images from vanishing). The factors and
    bounds are facelab's defaults: the paper gives the rule, not these numbers.

    Each epoch draws `num_samples // batch_size` batches of images with replacement, with probabilities
    w / Σw taken from the weights as they were when the epoch started (`set_position(epoch, 0)`), and a
    flip per drawn image; the draw depends only on (seed, epoch) and those weights, so a run resumed from
    `state_dict()` (current and epoch-start weights) sees the same batches. Feedback arriving during an
    epoch acts from the next epoch on, whatever the number of loader workers prefetching ahead.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        flip: bool = True,
        up: float = 1.25,
        down: float = 0.8,
        min_weight: float = 0.2,
        max_weight: float = 5.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training images")
        self.share = rank_share(batch_size, rank, world_size)
        if not (up >= 1.0 and 0.0 < down <= 1.0 and 0.0 < min_weight <= 1.0 <= max_weight < np.inf):
            raise ValueError("adaptive sampling needs up >= 1, 0 < down <= 1, 0 < min <= 1 <= max < inf, got "
                             f"up={up}, down={down}, min={min_weight}, max={max_weight}")
        self.num_samples, self.batch_size, self.seed, self.flip = num_samples, batch_size, seed, flip
        self.up, self.down, self.bounds = up, down, (min_weight, max_weight)
        self.weights = np.ones(num_samples)  # [N] current weights
        self.epoch_weights = self.weights.copy()  # [N] the weights this epoch was drawn from
        self.epoch, self.start_batch, self.drawn_epoch = 0, 0, 0
        self._draw()

    def _draw(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        count = self.num_samples // self.batch_size * self.batch_size
        self.order = rng.choice(self.num_samples, size=count, p=self.epoch_weights / self.epoch_weights.sum())
        self.flips = rng.random(count) < 0.5 if self.flip else np.zeros(count, bool)

    def set_position(self, epoch: int, batch: int = 0) -> None:
        """Move to batch `batch` of epoch `epoch`; entering a new epoch snapshots the current weights."""
        if epoch != self.drawn_epoch:
            self.epoch_weights, self.drawn_epoch = self.weights.copy(), epoch
        self.epoch, self.start_batch = epoch, batch
        self._draw()

    def batch(self, b: int) -> list[tuple[int, bool]]:
        """Batch `b` of the current epoch as (index, flip) items."""
        sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
        return [(int(i), bool(f)) for i, f in zip(self.order[sl], self.flips[sl], strict=True)]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for b in range(self.start_batch, self.num_samples // self.batch_size):
            yield self.batch(b)[self.share]

    def feedback(self, b: int, correct: np.ndarray) -> None:
        """Update the weights of the images of (global) batch `b` of this epoch from `correct` [batch_size]
        bool, the gathered feedback of every rank in a multi-process run.
        An image drawn twice in the batch is updated once per draw, in order."""
        correct = np.asarray(correct, dtype=bool)
        indices = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        if correct.shape != indices.shape:
            raise ValueError(f"feedback for {correct.shape} samples, batch {b} holds {indices.shape}")
        factors = np.where(correct, self.down, self.up)
        for i, f in zip(indices, factors, strict=True):  # sequential: repeated indices compound
            self.weights[i] = np.clip(self.weights[i] * f, *self.bounds)

    def state_dict(self) -> dict:
        """Weights (float64 tensors, loadable with weights_only=True) and the epoch they were drawn for."""
        return {"weights": torch.from_numpy(self.weights.copy()), "epoch_weights": torch.from_numpy(
            self.epoch_weights.copy()), "drawn_epoch": self.drawn_epoch}

    def load_state_dict(self, state: dict) -> None:
        weights, epoch_weights = state["weights"].numpy().astype(np.float64), state["epoch_weights"].numpy()
        if weights.shape != (self.num_samples,) or epoch_weights.shape != (self.num_samples,):
            raise ValueError(f"sampler state holds {weights.shape[0]} weights for {self.num_samples} images")
        self.weights, self.epoch_weights = weights.copy(), epoch_weights.astype(np.float64).copy()
        self.drawn_epoch = int(state["drawn_epoch"])
        self._draw()
