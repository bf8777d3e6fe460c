"""The head's cross-entropy and accuracy, plain or over a class-sharded classifier.

Sharded (model parallelism for the classifier, Deng et al. 2019 / An et al. 2022): every rank holds
the logits [B, C_local] of the whole (gathered) batch against its own classes, and the cross-entropy
over all C classes is assembled from per-rank pieces:
    L = mean_i ( M_i + log Σ_r Σ_{j in r} exp(z_ij - M_i) - z_{i,y_i} ),
    M_i = max_r max_{j in r} z_ij
with an all-reduce of the max (no gradient, a shift only), of the sum of exponentials and of the
target logit (only its owner contributes). See facelab.distributed.ops for the gradient convention.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from facelab.distributed.ops import all_reduce_max, all_reduce_sum, world


def sharded_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy [] over the classes of every rank; logits [B, C_local], labels [B] local
    column or -1 (the target is on another rank). Equals F.cross_entropy over the concatenated
    logits."""
    shift = all_reduce_max(logits.max(dim=1).values)  # [B], detached
    sum_exp = all_reduce_sum(torch.exp(logits - shift[:, None]).sum(dim=1))  # [B]
    picked = logits.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)  # [B]
    zero = torch.zeros_like(picked)
    target = all_reduce_sum(torch.where(labels >= 0, picked, zero))  # [B] z_{i,y_i}
    return (shift + sum_exp.log() - target).mean()


def cross_entropy(logits: Tensor, labels: Tensor, world_size: int) -> Tensor:
    """Mean cross-entropy of logits [B, C_local] against local columns [B]: F.cross_entropy at world
    size 1, else the sharded form above."""
    if world_size == 1:
        return F.cross_entropy(logits, labels)
    return sharded_cross_entropy(logits, labels)


@torch.no_grad()
def correct(logits: Tensor, labels: Tensor, columns: Tensor, world_size: int) -> Tensor:
    """[B] bool: the highest logit over every rank's columns is the label's (ties: the lowest
    class). logits [B, U] this rank's, labels [B] global class ids, columns [U] class id of each
    column."""
    if world_size == 1:
        return columns[logits.argmax(dim=1)] == labels
    best, col = logits.max(dim=1)  # [B]
    ids = columns[col]  # [B] class id of this rank's best column
    size = world()[1]
    bests = [torch.empty_like(best) for _ in range(size)]
    all_ids = [torch.empty_like(ids) for _ in range(size)]
    dist.all_gather(bests, best.contiguous())
    dist.all_gather(all_ids, ids.contiguous())
    # [B] first rank holding the max (rank order = class order)
    winner = torch.stack(bests).argmax(dim=0)
    return torch.stack(all_ids).gather(0, winner[None]).squeeze(0) == labels
