"""Batch samplers whose order depends only on (seed, epoch), so a resumed run sees the same batches."""

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Shuffled batches of (index, flip) items; drop_last. `set_position(epoch, batch)` resumes mid-epoch."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, flip: bool = True) -> None:
        if num_samples < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training images")
        self.num_samples, self.batch_size, self.seed, self.flip = num_samples, batch_size, seed, flip
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return self.num_samples // self.batch_size - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples)
        flips = rng.random(self.num_samples) < 0.5 if self.flip else np.zeros(self.num_samples, bool)
        for b in range(self.start_batch, self.num_samples // self.batch_size):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield [(int(i), bool(f)) for i, f in zip(order[sl], flips[sl], strict=True)]
