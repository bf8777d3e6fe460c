"""Easy and hard images of the same identities in every batch, for DDL (Huang et al. 2020,
Sec. 3.3).

Two ways to tell easy from hard (`distill.split`):
- attribute: a CSV with yaw_deg and resolution per training image (the synthetic generator's
  attributes.csv; its image column is relative to the training folder, which alignment mirrors);
- degradation: every image may be easy; hard views are made on the fly from it (down-sample, blur,
  noise, JPEG), seeded per item, so any dataset works.
Sampler items are (index, flip, group, item_seed): group 0 easy (teacher), 1 hard (student), -1 a
filler image the DDL loss ignores; `DistillDataset` turns them into
(image, label, {"ddl_group": group}).
"""

import csv
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from facelab.config import DistillConfig
from facelab.data.batch_sampler import ResumableBatchSampler
from facelab.errors import FacelabError
from facelab.io import decode_image, encode_image

Item = tuple[int, bool, int, int]  # (index, flip, group, item seed)


def attribute_split(
    dataset: Dataset, csv_path: str | Path, cfg: DistillConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(easy [N] bool, hard [N] bool) of an image-folder dataset from an attributes CSV (see module
    doc)."""
    csv_path = Path(csv_path)
    if not hasattr(dataset, "samples") or not hasattr(dataset, "root"):
        raise FacelabError(
            "config distill.split: 'attribute' needs an image-folder training set; "
            "use 'degradation'"
        )
    try:
        with csv_path.open(newline="") as f:
            rows = {r["image"]: r for r in csv.DictReader(f)}
    except OSError as e:
        raise FacelabError(f"{csv_path}: cannot read the attributes CSV ({e.strerror})") from None
    except KeyError:
        raise FacelabError(f"{csv_path}: the attributes CSV has no 'image' column") from None
    yaw, res = np.empty(len(dataset.samples)), np.empty(len(dataset.samples))
    for i, (path, _) in enumerate(dataset.samples):
        name = Path(path).relative_to(dataset.root).as_posix()
        row = rows.get(name)
        if row is None:
            raise FacelabError(f"{csv_path}: no row for training image {name!r}")
        try:
            yaw[i], res[i] = abs(float(row["yaw_deg"])), float(row["resolution"])
        except (KeyError, TypeError, ValueError):
            raise FacelabError(
                f"{csv_path}: row {name!r} needs numeric yaw_deg and resolution"
            ) from None
    easy = (yaw < cfg.easy_max_yaw) & (res >= cfg.easy_min_resolution)
    hard = (yaw >= cfg.hard_min_yaw) | (res < cfg.hard_max_resolution)
    return easy, hard & ~easy


def degrade(image: np.ndarray, rng: np.random.Generator, cfg: DistillConfig) -> np.ndarray:
    """A hard view of an RGB uint8 [H, W, 3] image: down-sample to a side in cfg.degrade_side and
    back, Gaussian blur, Gaussian noise, JPEG at a quality in cfg.degrade_jpeg (all drawn from
    `rng`)."""
    h, w = image.shape[:2]
    side = int(rng.integers(cfg.degrade_side[0], cfg.degrade_side[1] + 1))
    small = cv2.resize(image, (max(2, round(side * w / h)), side), interpolation=cv2.INTER_AREA)
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    sigma = rng.uniform(0.0, cfg.degrade_blur)
    if sigma > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out += rng.normal(0.0, rng.uniform(0.0, cfg.degrade_noise), out.shape).astype(np.float32)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(cfg.degrade_jpeg[0], cfg.degrade_jpeg[1] + 1))
    return decode_image(encode_image(out, ".jpg", quality), "degraded view")


class DistillDataset(Dataset):
    """Wraps a training dataset for DDL: item (index, flip, group, seed) -> (uint8 [3, H, W], label,
    {"ddl_group": int64 []}); with degradation, group-1 images are replaced by a hard view seeded by
    the item (reproducible whatever the number of loader workers). A plain (index, flip) item is
    group -1."""

    def __init__(self, base: Dataset, cfg: DistillConfig) -> None:
        self.base, self.cfg, self.labels = base, cfg, base.labels
        self.num_classes = base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: Item | tuple[int, bool] | int) -> tuple[torch.Tensor, int, dict]:
        item = (item, False) if isinstance(item, int) else tuple(item)
        index, flip, group, seed = (*item, -1, 0) if len(item) == 2 else item
        image, label = self.base[(int(index), bool(flip))]
        if self.cfg.split == "degradation" and group == 1:
            hwc = degrade(image.permute(1, 2, 0).numpy(), np.random.default_rng(seed), self.cfg)
            image = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
        return image, label, {"ddl_group": torch.tensor(group, dtype=torch.int64)}


class DDLBatchSampler(ResumableBatchSampler):
    """Batches of `identities` units: a unit is `n_easy` easy and `n_hard` hard images of one
    identity (distinct images) followed by batch_size / identities - n_easy - n_hard random filler
    images.

    Batch b of epoch e depends only on (seed, e, b), so `set_position` resumes exactly. `batch_size`
    is the global batch; rank r of `world_size` yields units [r·U/ws, (r+1)·U/ws) of it (whole
    identities, so each rank holds its positive pairs), and the ranks' shares concatenated are the
    world_size=1 batch. Identities in `exclude` are never drawn (held out for the histogram
    plots)."""

    def __init__(
        self,
        labels: np.ndarray,
        easy: np.ndarray,
        hard: np.ndarray,
        batch_size: int,
        identities: int,
        n_easy: int,
        n_hard: int,
        seed: int,
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        exclude: tuple[int, ...] | np.ndarray = (),
    ) -> None:
        per_unit, rest = divmod(batch_size, identities)
        if rest or per_unit < n_easy + n_hard:
            raise ValueError(
                f"batch size {batch_size} must be a multiple of {identities} identities with at "
                f"least {n_easy + n_hard} images each"
            )
        if identities % world_size or not 0 <= rank < world_size:
            raise ValueError(
                f"{identities} identities per batch do not split over rank {rank} of {world_size}"
            )
        self.labels = np.asarray(labels)
        self.num_samples, self.batch_size = len(self.labels), batch_size
        self.seed, self.flip = seed, flip
        self.identities, self.n_easy, self.n_hard = identities, n_easy, n_hard
        self.fill = per_unit - n_easy - n_hard
        self.rank, self.world_size = rank, world_size
        self.pools = eligible_pools(self.labels, easy, hard, n_easy, n_hard, exclude)
        if len(self.pools) < identities:
            raise ValueError(
                f"only {len(self.pools)} identities have {n_easy} easy and {n_hard} hard images; "
                f"a batch needs {identities}"
            )
        excluded = np.isin(self.labels, np.asarray(exclude, dtype=self.labels.dtype))
        self.filler = np.flatnonzero(~excluded)
        if self.num_samples < batch_size or len(self.filler) < identities * self.fill:
            raise ValueError(
                f"batch size {batch_size} exceeds the {len(self.filler)} training images"
            )
        self.epoch, self.start_batch = 0, 0

    def batch(self, b: int) -> list[Item]:
        """This rank's share of global batch `b` of the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, b])
        chosen = rng.choice(len(self.pools), self.identities, replace=False)
        fill = rng.choice(self.filler, self.identities * self.fill, replace=False)
        fill = fill.reshape(self.identities, -1)
        units = []
        for u, k in enumerate(chosen):
            easy, hard = self.pools[k]
            e = rng.choice(easy, self.n_easy, replace=False)
            h = rng.choice(np.setdiff1d(hard, e), self.n_hard, replace=False)
            index = np.concatenate([e, h, fill[u]])
            group = np.repeat([0, 1, -1], [self.n_easy, self.n_hard, self.fill])
            flips = rng.random(len(index)) < 0.5 if self.flip else np.zeros(len(index), bool)
            seeds = rng.integers(0, 2**31 - 1, len(index))
            rows = zip(index, flips, group, seeds, strict=True)
            units.append([(int(i), bool(f), int(g), int(s)) for i, f, g, s in rows])
        per_rank = self.identities // self.world_size
        mine = units[self.rank * per_rank : (self.rank + 1) * per_rank]
        return [item for unit in mine for item in unit]

    def __iter__(self) -> Iterator[list[Item]]:
        for b in range(self.start_batch, self.num_samples // self.batch_size):
            yield self.batch(b)


def eligible_pools(
    labels: np.ndarray,
    easy: np.ndarray,
    hard: np.ndarray,
    n_easy: int,
    n_hard: int,
    exclude: tuple[int, ...] | np.ndarray = (),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(easy indices, hard indices)] of every identity not excluded with enough distinct images, by
    label.
    The easy and hard sets are disjoint (attribute split) or equal (degradation split)."""
    pools, skip = [], set(np.asarray(exclude).tolist())
    for label in np.unique(labels):
        if label in skip:
            continue
        mine = labels == label
        e, h = np.flatnonzero(mine & easy), np.flatnonzero(mine & hard)
        if len(e) >= n_easy and len(h) >= n_hard and len(np.union1d(e, h)) >= n_easy + n_hard:
            pools.append((e, h))
    return pools
