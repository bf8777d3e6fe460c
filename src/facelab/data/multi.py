"""Multi-dataset training (DAIL, Wang et al., "Dataset-aware and invariant learning for face
recognition", ICPR 2020, arXiv 2101.05419): several training sets, each with its own class space,
merged without cleaning.

`UnionDataset` concatenates them with label offsets: class c of dataset d is the global class
`offsets[d] + c` (offsets [D + 1], offsets[0] = 0, offsets[-1] = all classes), so one classifier
matrix holds every dataset's classes in contiguous blocks. `DatasetShareSampler` fills every global
batch with a fixed number of images of each dataset (shares from the sampling weights, largest
remainder).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facelab.data import open_training_set
from facelab.data.batch_sampler import ResumableBatchSampler
from facelab.errors import FacelabError


def dataset_of(labels: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Dataset id [B] of global labels [B], given offsets [D + 1]: d with
    offsets[d] <= label < offsets[d + 1]."""
    return torch.bucketize(labels, offsets[1:].to(labels.device), right=True)


class UnionDataset(Dataset):
    """Items (global index, flip) -> (uint8 [3, H, W], offsets[d] + local label) of the dataset d
    holding it."""

    def __init__(self, datasets: Sequence[Dataset], names: Sequence[str]) -> None:
        if not datasets or len(datasets) != len(names):
            raise FacelabError(f"multi-dataset: {len(datasets)} datasets for {len(names)} names")
        if len(set(names)) != len(names):
            raise FacelabError(f"data.datasets: names must differ, got {list(names)}")
        self.datasets, self.names = list(datasets), list(names)
        self.sizes = [len(d) for d in self.datasets]
        # [D + 1] first global index of each dataset
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        # [D + 1]
        self.offsets = [0, *np.cumsum([d.num_classes for d in self.datasets]).tolist()]
        shapes = {name: tuple(d[(0, False)][0].shape)
                  for name, d in zip(self.names, self.datasets, strict=True)}
        if len(set(shapes.values())) > 1:
            raise FacelabError(f"data.datasets: image sizes differ {shapes}; align them to one "
                               "size")

    @property
    def num_classes(self) -> int:
        return self.offsets[-1]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset d, index inside d) of a global index."""
        d = int(np.searchsorted(self.starts, index, side="right")) - 1
        return d, index - int(self.starts[d])

    def __getitem__(self, item: tuple[int, bool] | int) -> tuple[torch.Tensor, int]:
        index, flip = item if isinstance(item, tuple) else (item, False)
        d, local = self.locate(int(index))
        image, label = self.datasets[d][(local, flip)]
        return image, int(label) + self.offsets[d]


def batch_shares(weights: Sequence[float], batch_size: int) -> list[int]:
    """Images of each dataset in a batch of `batch_size`: proportional to the weights, rounded by
    the largest remainder (the shares sum to batch_size); at least 1 each."""
    w = np.asarray(weights, dtype=np.float64)
    if batch_size < len(w):
        raise FacelabError(f"config data.batch_size: {batch_size} is smaller than the {len(w)} "
                           "datasets")
    exact = batch_size * w / w.sum()
    shares = np.floor(exact).astype(int)
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[: batch_size - shares.sum()]] += 1
    while shares.min() == 0:  # a tiny weight still gets one image, taken from the largest share
        shares[np.argmax(shares)] -= 1
        shares[np.argmin(shares)] += 1
    return shares.tolist()


class DatasetShareSampler(ResumableBatchSampler):
    """Batches with a fixed share of each dataset (global indices of a `UnionDataset`), this rank's
    part.

    Epoch e draws a permutation of every dataset from (seed, e, d); global batch b takes images
    [b·share_d, (b+1)·share_d) of each, in dataset order. An epoch has min_d(size_d // share_d)
    batches (a larger dataset shows only part of itself per epoch, a new part each epoch). Rank r
    of world_size keeps items r, r + world_size, ... of the global batch: every rank sees a fixed
    count of each dataset, and the ranks' parts together are the world_size=1 batch. Depends only
    on (seed, epoch, batch): resumable with `set_position(epoch, batch)`.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int,
                 flip: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if len(sizes) != len(weights):
            raise FacelabError(f"multi-dataset: {len(sizes)} datasets for {len(weights)} weights")
        if not 0 <= rank < world_size or batch_size % world_size:
            raise FacelabError(f"config data.batch_size: {batch_size} must split evenly over "
                               f"{world_size} ranks (rank {rank})")
        self.sizes, self.shares = [int(s) for s in sizes], batch_shares(weights, batch_size)
        short = [d for d, (n, k) in enumerate(zip(self.sizes, self.shares, strict=True)) if n < k]
        if short:
            d = short[0]
            raise FacelabError(f"config data.batch_size: dataset {d} has {self.sizes[d]} images, "
                               f"fewer than its share {self.shares[d]} of a batch")
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.seed, self.flip, self.rank, self.world_size = seed, flip, rank, world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return min(n // k for n, k in zip(self.sizes, self.shares, strict=True))

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def global_batch(self, b: int, orders: list[np.ndarray],
                     flips: list[np.ndarray]) -> list[tuple[int, bool]]:
        items = []
        for d, k in enumerate(self.shares):
            sl = slice(b * k, (b + 1) * k)
            rows = zip(orders[d][sl], flips[d][sl], strict=True)
            items += [(int(self.starts[d] + i), bool(f)) for i, f in rows]
        return items

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        rngs = [np.random.default_rng([self.seed, self.epoch, d]) for d in range(len(self.sizes))]
        orders = [rng.permutation(n) for rng, n in zip(rngs, self.sizes, strict=True)]
        flips = [rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
                 for rng, n in zip(rngs, self.sizes, strict=True)]
        for b in range(self.start_batch, self.batches_per_epoch):
            yield self.global_batch(b, orders, flips)[self.rank :: self.world_size]


def open_training_data(data, preload: bool = False) -> Dataset:
    """`data` (a DataConfig): the single set `data.train`, or the `UnionDataset` of
    `data.datasets`, each checked as `data.check_images` and `data.skip_bad` say
    (facelab.data.open_training_set). The result's `bad_images` [(name, reason)] lists the images
    left out (empty when none)."""
    checks = {"check_images": data.check_images, "skip_bad": data.skip_bad}
    if not data.datasets:
        if not data.train:
            raise FacelabError("config data.train: no training set given (or give data.datasets)")
        return open_training_set(data.train, preload=preload, **checks)
    names = [e.name or Path(e.path).name for e in data.datasets]
    parts = [open_training_set(e.path, preload=preload, **checks) for e in data.datasets]
    union = UnionDataset(parts, names)
    union.bad_images = [bad for d in parts for bad in getattr(d, "bad_images", [])]
    return union


def dataset_sampler(dataset: UnionDataset, data, seed: int, rank: int = 0,
                    world_size: int = 1) -> DatasetShareSampler:
    """The fixed-share sampler of a `UnionDataset` built from `data.datasets` (a DataConfig)."""
    weights = [e.weight for e in data.datasets]
    return DatasetShareSampler(dataset.sizes, weights, data.batch_size, seed, data.flip, rank,
                               world_size)
