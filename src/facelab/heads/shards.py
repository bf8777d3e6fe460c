"""Class sharding of the classifier (model parallelism, Deng et al. 2019 / An et al. 2022).

Classes are split over `world_size` ranks in contiguous ranges; a rank holds [start, end). Labels
become local columns (-1 where the target lives on another rank), and cos θ_y is shared by a sum
over ranks: the identity at world size 1, a differentiable all-reduce (facelab.distributed.ops)
otherwise.
"""

import torch
from torch import Tensor

from facelab.distributed.ops import all_reduce_sum


def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of the classes rank `rank` holds; the first `num_classes % world_size` ranks get
    one more."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + int(rank < extra)


def local_labels(labels: Tensor, start: int, end: int) -> Tensor:
    """Global labels [B] -> local columns [B]: label - start inside [start, end), -1 elsewhere."""
    inside = (labels >= start) & (labels < end)
    return torch.where(inside, labels - start, torch.full_like(labels, -1))


def target_cos(cos: Tensor, local: Tensor, world_size: int = 1) -> Tensor:
    """cos θ_y [B] of every sample, shared across ranks.

    Each rank contributes its column where the target is local and 0 elsewhere; the sum over ranks
    is cos θ_y. At world size 1 that sum is the local value (with its gradient).
    """
    picked = cos.gather(1, local.clamp(min=0)[:, None]).squeeze(1)  # [B]
    contribution = torch.where(local >= 0, picked, torch.zeros_like(picked))
    return all_reduce_sum(contribution) if world_size != 1 else contribution
