"""Label-aware batch samplers for pair losses: P identities x K images, and siamese (a, b, same)
pairs.

Both follow facelab.data.batch_sampler.ResumableBatchSampler: batches of (index, flip) items whose
content depends only on (seed, epoch), `set_position(epoch, batch)` to resume mid-epoch, `__len__`
= batches left in the epoch, and an epoch of num_samples // batch_size batches (as the uniform
sampler, so the loop's step -> position map holds). `batch_size` is the GLOBAL batch: every rank
draws the same global batch and keeps the contiguous share [rank · B/world, (rank+1) · B/world) of
it (COMMON convention).
"""

from collections.abc import Iterator

import numpy as np

from facelab.config import Config
from facelab.data.batch_sampler import ResumableBatchSampler
from facelab.errors import FacelabError


def _by_identity(labels: np.ndarray) -> list[np.ndarray]:
    """Image indices of each identity that has images, in label order."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds) if len(order) else []


class _LabelSampler(ResumableBatchSampler):
    """Shared position, length and rank-share logic; subclasses fill `_epoch_batches(rng)` [n, B]
    indices."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int, flip: bool, rank: int,
                 world_size: int, unit: int) -> None:
        if batch_size % (unit * world_size):
            raise ValueError(f"batch size {batch_size} must be a multiple of {unit} x world size "
                             f"{world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.identities = _by_identity(labels)
        self.num_samples, self.batch_size = len(labels), batch_size
        if self.num_samples < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {self.num_samples} training "
                             "images")
        self.seed, self.flip, self.rank, self.world_size = seed, flip, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        # [n, B] global batches
        batches = self._epoch_batches(rng, self.num_samples // self.batch_size)
        flips = rng.random(batches.shape) < 0.5 if self.flip else np.zeros(batches.shape, bool)
        share = self.batch_size // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        for b in range(self.start_batch, len(batches)):
            rows = zip(batches[b, mine], flips[b, mine], strict=True)
            yield [(int(i), bool(f)) for i, f in rows]

    def _epoch_batches(self, rng: np.random.Generator, count: int) -> np.ndarray:
        raise NotImplementedError


class PKBatchSampler(_LabelSampler):
    """Batches of P = batch_size / k identities x k images each (FaceNet; Hermans et al. 2017, "In
    Defense of the Triplet Loss"): identities are visited in a fresh random order, P at a time (a
    new order when the list runs out), and each contributes k of its images, without replacement
    when it has at least k, with replacement otherwise. Items of one identity are adjacent:
    [id0 x k, id1 x k, ...]."""

    def __init__(self, labels: np.ndarray, batch_size: int, k: int, seed: int, flip: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        super().__init__(labels, batch_size, seed, flip, rank, world_size, unit=k)
        self.k, self.p = k, batch_size // k
        if len(self.identities) < self.p:
            raise ValueError(f"P = {self.p} identities per batch but the set has "
                             f"{len(self.identities)}")

    def _epoch_batches(self, rng: np.random.Generator, count: int) -> np.ndarray:
        n_id = len(self.identities)
        rounds = -(-count * self.p // n_id)  # enough identity permutations for the epoch
        visit = np.concatenate([rng.permutation(n_id) for _ in range(rounds)])[: count * self.p]
        # P consecutive identities of one permutation may repeat across a permutation boundary:
        # fine (rare)
        rows = [rng.choice(self.identities[c], self.k, replace=len(self.identities[c]) < self.k)
                for c in visit]
        return np.asarray(rows, dtype=np.int64).reshape(count, self.batch_size)


class SiamesePairSampler(_LabelSampler):
    """Batches of batch_size / 2 pairs, interleaved (a0, b0, a1, b1, ...):
    round(positive_fraction · n) same-identity pairs (an identity with >= 2 images, two distinct
    images) and the rest different-identity pairs (two distinct identities, one image each), in
    random order. The classic siamese set-up (Chopra et al. 2005; Hadsell et al. 2006), for the
    contrastive loss on these pairs only."""

    def __init__(self, labels: np.ndarray, batch_size: int, positive_fraction: float, seed: int,
                 flip: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive fraction must be in [0, 1], got {positive_fraction}")
        super().__init__(labels, batch_size, seed, flip, rank, world_size, unit=2)
        self.positive_fraction = positive_fraction
        self.multi = [ids for ids in self.identities if len(ids) >= 2]
        if positive_fraction > 0 and not self.multi:
            raise ValueError("same-identity pairs need an identity with at least 2 images")
        if positive_fraction < 1 and len(self.identities) < 2:
            raise ValueError("different-identity pairs need at least 2 identities")

    def _pair(self, rng: np.random.Generator, same: bool) -> list[int]:
        if same:
            return list(rng.choice(self.multi[rng.integers(len(self.multi))], 2, replace=False))
        c1, c2 = rng.choice(len(self.identities), 2, replace=False)
        return [rng.choice(self.identities[c1]), rng.choice(self.identities[c2])]

    def _epoch_batches(self, rng: np.random.Generator, count: int) -> np.ndarray:
        n_pairs = self.batch_size // 2
        n_same = round(self.positive_fraction * n_pairs)
        batches = []
        for _ in range(count):
            # [n_pairs] True: same-identity pair
            kinds = rng.permutation(np.arange(n_pairs) < n_same)
            batches.append([i for same in kinds for i in self._pair(rng, bool(same))])
        return np.asarray(batches, dtype=np.int64)


def build_label_sampler(labels: np.ndarray, cfg: Config, rank: int = 0,
                        world_size: int = 1) -> _LabelSampler | None:
    """The sampler for data.sampler = pk | siamese, or None for the uniform one
    (facelab.data.samplers)."""
    d = cfg.data
    if d.sampler == "uniform":
        return None
    try:
        if d.sampler == "pk":
            return PKBatchSampler(labels, d.batch_size, d.pk_k, cfg.seed, d.flip, rank, world_size)
        return SiamesePairSampler(labels, d.batch_size, d.positive_fraction, cfg.seed, d.flip,
                                  rank, world_size)
    except ValueError as e:
        raise FacelabError(f"config data.sampler={d.sampler}: {e}") from None
