"""The uniform and adaptive batch samplers, and `build_sampler`: the one place that picks a run's
batch sampler from its config.

Every sampler follows facelab.data.batch_sampler.ResumableBatchSampler: batches of (index, flip)
items whose order depends only on (seed, epoch) (and, for AdaptiveBatchSampler, the weights it
checkpoints), so a resumed run sees the same batches; `batch_size` is the GLOBAL batch, each rank
yielding its share.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from facelab.config import Config
from facelab.data.batch_sampler import ResumableBatchSampler, rank_share
from facelab.data.multi import dataset_sampler
from facelab.data.pk_sampler import build_label_sampler
from facelab.errors import FacelabError


def build_sampler(cfg: Config, dataset: Dataset, rank: int = 0,
                  world_size: int = 1) -> ResumableBatchSampler:
    """The batch sampler of `cfg` over `dataset` for `rank` of `world_size`:
      - data.datasets (several sets, DAIL): a fixed share of every batch per dataset
        (facelab.data.multi.DatasetShareSampler);
      - else data.sampler pk | siamese: label-aware batches (facelab.data.pk_sampler);
      - else AdaptiveFace's Adaptive Data Sampling when data.adaptive_sampling.enabled;
      - else uniform shuffled epochs (EpochBatchSampler).
    A batch size the data cannot fill is a FacelabError naming the config field."""
    if cfg.data.datasets:
        return dataset_sampler(dataset, cfg.data, cfg.seed, rank, world_size)
    sampler = build_label_sampler(dataset.labels, cfg, rank, world_size)
    if sampler is not None:
        return sampler
    ads, bs = cfg.data.adaptive_sampling, cfg.data.batch_size
    shard = {"rank": rank, "world_size": world_size}
    try:
        if ads.enabled:
            bounds = ads.min_weight, ads.max_weight
            return AdaptiveBatchSampler(len(dataset), bs, cfg.seed, cfg.data.flip, ads.up, ads.down,
                                        *bounds, **shard)
        return EpochBatchSampler(len(dataset), bs, cfg.seed, cfg.data.flip, **shard)
    except ValueError as e:
        raise FacelabError(f"config data.batch_size: {e}") from None


class EpochBatchSampler(ResumableBatchSampler):
    """Shuffled batches of (index, flip) items; drop_last. `set_position(epoch, batch)` resumes
    mid-epoch."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, flip: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if num_samples < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training images")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.flip = seed, flip
        self.share = rank_share(batch_size, rank, world_size)
        self.epoch, self.start_batch = 0, 0

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples)
        flips = (rng.random(self.num_samples) < 0.5 if self.flip
                 else np.zeros(self.num_samples, bool))
        for b in range(self.start_batch, self.num_samples // self.batch_size):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            items = [(int(i), bool(f)) for i, f in zip(order[sl], flips[sl], strict=True)]
            yield items[self.share]


class AdaptiveBatchSampler(ResumableBatchSampler):
    """AdaptiveFace's Adaptive Data Sampling (Liu et al. 2019, "AdaptiveFace: Adaptive Margin and
    Sampling for Face Recognition", Sec. 3.3): images are drawn with probability proportional to a
    per-image weight that the trainer's feedback raises for misclassified images and lowers for
    correct ones, so training dwells on the hard ones.

    Feedback (`feedback(batch_index, correct)`, the batch number in the epoch):
    w_i ← clip(w_i·up) for a misclassified image, clip(w_i·down) for a correct one, clip to
    [min_weight, max_weight] (weights start at 1; the bounds keep label noise from taking over and
    easy images from vanishing). The factors and bounds are facelab's defaults: the paper gives the
    rule, not these numbers.

    Each epoch draws `num_samples // batch_size` batches of images with replacement, with
    probabilities w / Σw taken from the weights as they were when the epoch started
    (`set_position(epoch, 0)`), and a flip per drawn image; the draw depends only on (seed, epoch)
    and those weights, so a run resumed from `state_dict()` (current and epoch-start weights) sees
    the same batches. Feedback arriving during an epoch acts from the next epoch on, whatever the
    number of loader workers prefetching ahead.
    """

    wants_feedback = True

    def __init__(self, num_samples: int, batch_size: int, seed: int, flip: bool = True,
                 up: float = 1.25, down: float = 0.8, min_weight: float = 0.2,
                 max_weight: float = 5.0, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {num_samples} training images")
        self.share = rank_share(batch_size, rank, world_size)
        if not (up >= 1.0 and 0.0 < down <= 1.0
                and 0.0 < min_weight <= 1.0 <= max_weight < np.inf):
            raise ValueError("adaptive sampling needs up >= 1, 0 < down <= 1, "
                             "0 < min <= 1 <= max < inf, got "
                             f"up={up}, down={down}, min={min_weight}, max={max_weight}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.flip = seed, flip
        self.up, self.down, self.bounds = up, down, (min_weight, max_weight)
        self.weights = np.ones(num_samples)  # [N] current weights
        self.epoch_weights = self.weights.copy()  # [N] the weights this epoch was drawn from
        self.epoch, self.start_batch, self.drawn_epoch = 0, 0, 0
        self._draw()

    def _draw(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        count = self.num_samples // self.batch_size * self.batch_size
        p = self.epoch_weights / self.epoch_weights.sum()
        self.order = rng.choice(self.num_samples, size=count, p=p)
        self.flips = rng.random(count) < 0.5 if self.flip else np.zeros(count, bool)

    def set_position(self, epoch: int, batch: int = 0) -> None:
        """Move to batch `batch` of epoch `epoch`; entering a new epoch snapshots the current
        weights."""
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

    def feedback(self, batch_index: int, correct: np.ndarray) -> None:
        """Update the weights of the images of (global) batch `batch_index` of this epoch from
        `correct` [batch_size] bool, the gathered feedback of every rank in a multi-process run.
        An image drawn twice in the batch is updated once per draw, in order."""
        b = batch_index
        correct = np.asarray(correct, dtype=bool)
        indices = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        if correct.shape != indices.shape:
            raise ValueError(f"feedback for {correct.shape} samples, batch {b} holds "
                             f"{indices.shape}")
        factors = np.where(correct, self.down, self.up)
        for i, f in zip(indices, factors, strict=True):  # sequential: repeated indices compound
            self.weights[i] = np.clip(self.weights[i] * f, *self.bounds)

    def state_dict(self) -> dict:
        """Weights (float64 tensors, loadable with weights_only=True) and the epoch they were drawn
        for."""
        return {"weights": torch.from_numpy(self.weights.copy()),
                "epoch_weights": torch.from_numpy(self.epoch_weights.copy()),
                "drawn_epoch": self.drawn_epoch}

    def load_state_dict(self, state: dict) -> None:
        weights = state["weights"].numpy().astype(np.float64)
        epoch_weights = state["epoch_weights"].numpy()
        if weights.shape != (self.num_samples,) or epoch_weights.shape != (self.num_samples,):
            raise ValueError(f"sampler state holds {weights.shape[0]} weights for "
                             f"{self.num_samples} images")
        self.weights, self.epoch_weights = weights.copy(), epoch_weights.astype(np.float64).copy()
        self.drawn_epoch = int(state["drawn_epoch"])
        self._draw()
