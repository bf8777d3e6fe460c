"""What `distill.name: ddl` adds to a training run beside its loss (facelab.losses.ddl): easy/hard
batches (facelab.distill.sampling) and the held-out histograms (facelab.distill.plots). The loop
calls `distill_data` and `DistillPlots` only."""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facelab.config import Config, DistillConfig
from facelab.distill import plots
from facelab.distill.sampling import (
    DDLBatchSampler,
    DistillDataset,
    attribute_split,
    eligible_pools,
)
from facelab.distributed.env import DistEnv
from facelab.errors import FacelabError


def split(dataset: Dataset, cfg: DistillConfig) -> tuple[np.ndarray, np.ndarray]:
    """(easy [N] bool, hard [N] bool): from the attributes CSV, or every image both
    (degradation)."""
    if cfg.split == "attribute":
        if not cfg.attributes:
            raise FacelabError("config distill.attributes: needed with distill.split 'attribute'")
        return attribute_split(dataset, cfg.attributes, cfg)
    every = np.ones(len(dataset), bool)
    return every, every


class DistillPlots:
    """Similarity histograms of held-out identities at step 0 and at the end (see
    facelab.distill.plots)."""

    def __init__(self, dataset: DistillDataset, pools: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.dataset, self.items = dataset, plots.plot_items(pools)

    def before(self, task: torch.nn.Module, run: Path, device: torch.device) -> None:
        plots.save_before(run, self._sims(task, device))

    def after(self, task: torch.nn.Module, run: Path, device: torch.device) -> Path:
        return plots.plot_histograms(run, self._sims(task, device))

    def _sims(self, task: torch.nn.Module, device: torch.device) -> dict[str, list[float]]:
        return plots.similarities(task.backbone, self.dataset, self.items, task.preprocess, device)


def distill_data(
    dataset: Dataset, cfg: Config, env: DistEnv | None = None
) -> tuple[DistillDataset, DDLBatchSampler, DistillPlots | None]:
    """(wrapped dataset, easy/hard batch sampler, plots or None) for a DDL run of `cfg`; under
    torchrun (`env`) the sampler yields this rank's share of each global batch."""
    rank, world_size = (env.rank, env.world_size) if env else (0, 1)
    d = cfg.distill
    easy, hard = split(dataset, d)
    labels = np.asarray(dataset.labels)
    pools = eligible_pools(labels, easy, hard, d.easy_per_identity, d.hard_per_identity)
    if d.plot_identities > len(pools) // 2:
        raise FacelabError(
            f"config distill.plot_identities: {d.plot_identities} held out of {len(pools)} "
            "identities with easy and hard images leaves too few to train on"
        )
    held = np.random.default_rng([cfg.seed, 7]).choice(len(pools), d.plot_identities, replace=False)
    exclude = [int(labels[pools[k][0][0]]) for k in held]
    wrapped = DistillDataset(dataset, d)
    try:
        sampler = DDLBatchSampler(
            labels,
            easy,
            hard,
            cfg.data.batch_size,
            d.identities_per_batch,
            d.easy_per_identity,
            d.hard_per_identity,
            cfg.seed,
            cfg.data.flip,
            rank=rank,
            world_size=world_size,
            exclude=exclude,
        )
    except ValueError as e:
        raise FacelabError(f"config distill / data.batch_size: {e}") from None
    plot = DistillPlots(wrapped, [pools[k] for k in held]) if d.plot_identities else None
    return wrapped, sampler, plot
