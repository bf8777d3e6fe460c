"""Pair-based metric learning objectives, wrapping pytorch-metric-learning (PML) losses and miners.

METHODS.md "Pair-based metric learning" gives the equations; PML computes them (we do not rewrite
them):
- contrastive (Hadsell et al. 2006): `y·relu(d - m_pos) + (1-y)·relu(m_neg - d)` per pair;
- triplet (Schroff et al. 2015, FaceNet): `relu(d_ap - d_an + α)`; the semihard miner keeps
  triplets with `0 < d_an - d_ap <= α` (its α follows the loss margin unless miner_kwargs.margin
  says otherwise);
- margin (Wu et al. 2017): `relu(α + y·(d - β))`, y = +1 for a positive pair, -1 for a negative
  one, with a learnable β (a parameter of the objective: optimised with the network and saved in
  the checkpoint); usually mined with distance-weighted negative sampling or a uniform histogram of
  pair distances.
Reduction (PML defaults): contrastive and triplet average the non-zero terms (positive and negative
pair terms separately, then summed); margin divides the summed terms by the number of non-zero
terms.
Distances are Euclidean on L2-normalised embeddings (`l2`), or on the raw embeddings (`l2_raw`).

Batch mode: every pair / triplet of the batch (P identities x K images, data.sampler=pk) is a
candidate and the miner chooses among them. Siamese mode (data.sampler=siamese): the loader yields
pairs (a0, b0, a1, b1, ...) and only those B/2 pairs enter the contrastive loss, as in the classic
set-up.

Under torch.distributed the miner and loss see the batch gathered from all ranks (PML's distributed
wrappers), so mining spans the global batch; see `PairObjective.forward` for the gradient scale.
"""

from collections.abc import Callable

import torch
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from pytorch_metric_learning.utils.distributed import (
    DistributedLossWrapper,
    DistributedMinerWrapper,
    is_distributed,
)
from torch import nn

from facelab.config import Config, PairsConfig
from facelab.configcheck import check_choice
from facelab.errors import FacelabError
from facelab.losses.base import Objective

DISTANCES: dict[str, Callable[[], distances.BaseDistance]] = {
    "l2": lambda: distances.LpDistance(p=2, power=1, normalize_embeddings=True),
    "l2_raw": lambda: distances.LpDistance(p=2, power=1, normalize_embeddings=False),
}
# facelab defaults where PML's differ from the papers: FaceNet's α = 0.2; Wu et al.'s learnable β
LOSSES: dict[str, Callable[..., losses.BaseMetricLossFunction]] = {
    "contrastive": lambda distance, **kw: losses.ContrastiveLoss(distance=distance, **kw),
    "triplet": lambda distance, **kw: losses.TripletMarginLoss(
        distance=distance, **{"margin": 0.2, **kw}
    ),
    "margin": lambda distance, **kw: losses.MarginLoss(
        distance=distance, **{"learn_beta": True, **kw}
    ),
}


class DistanceWeightedMiner(miners.DistanceWeightedMiner):
    """PML's distance-weighted negative sampling (Wu et al. 2017, Sec. 4:
    weight ∝ d^(2-n)·(1 - d²/4)^((3-n)/2), d clamped at `cutoff` 0.5, zero from
    `nonzero_loss_cutoff` 1.4, then PML's sampler), with the log-weights normalised per anchor. PML
    subtracts one maximum for the whole batch before exp in float32: at face embedding sizes
    (n = 128-512) the log-weights of a batch span hundreds of nats, so the rows of anchors whose
    negatives are all farther than another anchor's underflow to zero and those anchors are silently
    dropped."""

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        n = embeddings.size(1)
        dist = self.distance(embeddings, ref_emb).clamp(min=self.cutoff)  # [B, R]
        # [B, R]
        log_w = (2.0 - n) * torch.log(dist) - ((n - 3) / 2) * torch.log1p(-0.25 * dist**2)
        usable = (
            (labels[:, None] != ref_labels[None, :])
            & (dist < self.nonzero_loss_cutoff)
            & log_w.isfinite()
        )
        log_w = log_w.masked_fill(~usable, float("-inf"))
        # a row without negatives: 0
        w = torch.exp(log_w - log_w.amax(1, keepdim=True)).nan_to_num(nan=0.0)
        w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        return lmu.get_random_triplet_indices(labels, ref_labels=ref_labels, weights=w)


MINERS: dict[str, Callable[..., miners.BaseMiner] | None] = {
    "": None,
    "semihard": lambda distance, **kw: miners.TripletMarginMiner(
        distance=distance, type_of_triplets="semihard", **kw
    ),
    "distance_weighted": lambda distance, **kw: DistanceWeightedMiner(distance=distance, **kw),
    "uniform_histogram": lambda distance, **kw: miners.UniformHistogramMiner(
        distance=distance, **kw
    ),
}


def siamese_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """PML pair indices (a1, p, a2, n) of the interleaved pairs (0, 1), (2, 3), ... of a siamese
    batch."""
    # [B/2] first image of each pair
    a = torch.arange(0, len(labels) - 1, 2, device=labels.device)
    b = a + 1
    same = labels[a] == labels[b]
    return a[same], b[same], a[~same], b[~same]


class PairObjective(Objective):
    """`objective(embeddings [B, d], labels [B]) -> {"pairs": weight · loss}`
    (facelab.train.task)."""

    def __init__(
        self, loss: nn.Module, miner: nn.Module | None, weight: float, siamese: bool = False
    ) -> None:
        super().__init__()
        self.loss, self.miner, self.weight, self.siamese = loss, miner, weight, siamese
        self._hooked = False  # learnable loss parameters get their distributed gradient hook once

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, **extras: torch.Tensor
    ) -> dict:
        # distances and margins in float32 under autocast
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        if self.siamese:  # the pairs are local to each rank: no gathering
            return {"pairs": self.weight * self.loss(embeddings, labels, siamese_pairs(labels))}
        world = torch.distributed.get_world_size() if is_distributed() else 1
        if world == 1:
            tuples = self.miner(embeddings, labels) if self.miner is not None else None
            return {"pairs": self.weight * self.loss(embeddings, labels, tuples)}
        # Every rank mines and evaluates the loss L on the gathered global batch (its own rows
        # first); only its own rows carry gradient, so PML returns world·L and DDP's mean over
        # ranks of the parameter gradients gives dL/dθ. We keep that gradient but report the value
        # L; the loss parameters (β), which see the whole batch on every rank, get their gradient
        # divided by world back.
        self._hook_parameters()
        miner = DistributedMinerWrapper(self.miner) if self.miner is not None else None
        tuples = miner(embeddings, labels) if miner is not None else None
        scaled = DistributedLossWrapper(self.loss)(embeddings, labels, tuples)  # world · L
        # value L, gradient of world · L
        value = scaled.detach() / world + (scaled - scaled.detach())
        return {"pairs": self.weight * value}

    def _hook_parameters(self) -> None:
        if not self._hooked:
            for p in self.loss.parameters():
                p.register_hook(lambda g: g / torch.distributed.get_world_size())
            self._hooked = True


def build_pair_objective(cfg: PairsConfig, siamese: bool = False) -> PairObjective:
    """The configured PML loss (+ miner) as a facelab objective; FacelabError on bad names or
    arguments."""
    check_choice(cfg.loss, LOSSES, "pairs.loss")
    check_choice(cfg.miner, MINERS, "pairs.miner")
    check_choice(cfg.distance, DISTANCES, "pairs.distance")
    if siamese and (cfg.loss != "contrastive" or cfg.miner):
        raise FacelabError(
            "config pairs: data.sampler=siamese feeds fixed pairs to a contrastive loss; got "
            f"loss {cfg.loss!r}, miner {cfg.miner!r} (use loss=contrastive, miner='')"
        )
    if cfg.miner == "distance_weighted" and cfg.distance != "l2":
        raise FacelabError(
            "config pairs.miner: distance_weighted samples on the unit sphere: needs distance=l2"
        )
    try:
        loss = LOSSES[cfg.loss](DISTANCES[cfg.distance](), **cfg.kwargs)
    except TypeError as e:
        raise FacelabError(f"config pairs.kwargs: {e}") from None
    miner_kw = dict(cfg.miner_kwargs)
    if cfg.miner == "semihard":  # the selection rule's α is the loss margin unless set apart
        miner_kw.setdefault("margin", getattr(loss, "margin", 0.2))
    try:
        miner = MINERS[cfg.miner](DISTANCES[cfg.distance](), **miner_kw) if cfg.miner else None
    except TypeError as e:
        raise FacelabError(f"config pairs.miner_kwargs: {e}") from None
    return PairObjective(loss, miner, cfg.weight, siamese)


def pairs_objective(cfg: Config) -> PairObjective | None:
    """The pair objective of `cfg` (objective: pairs), or None for a head alone."""
    if cfg.objective == "head":
        return None
    return build_pair_objective(cfg.pairs, siamese=cfg.data.sampler == "siamese")
