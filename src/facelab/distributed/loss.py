"""The class-sharded head forward (model parallelism for the classifier, Deng et al. 2019 / An et al. 2022).

Each rank holds the centres of its classes; embeddings and labels of the whole (global) batch are
gathered with gradient, every rank computes the cosines to its own centres, the margin turns them into
logits [B, C_local], and the cross-entropy over all C classes is assembled from per-rank pieces:
    L = mean_i ( M_i + log Σ_r Σ_{j in r} exp(z_ij - M_i) - z_{i,y_i} ),  M_i = max_r max_{j in r} z_ij
with an all-reduce of the max (no gradient, a shift only), of the sum of exponentials and of the target
logit (only its owner contributes). See facelab.distributed.ops for the gradient convention.
"""

import torch
import torch.distributed as dist
from torch import Tensor, nn

from facelab.distributed.ops import all_reduce_max, all_reduce_sum, gather_rows, replicated_loss, world
from facelab.heads.dataset_mask import logit_columns


def sharded_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy [] over the classes of every rank; logits [B, C_local], labels [B] local column
    or -1 (the target is on another rank). Equals F.cross_entropy over the concatenated logits."""
    shift = all_reduce_max(logits.max(dim=1).values)  # [B], detached
    sum_exp = all_reduce_sum(torch.exp(logits - shift[:, None]).sum(dim=1))  # [B]
    picked = logits.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)  # [B]
    target = all_reduce_sum(torch.where(labels >= 0, picked, torch.zeros_like(picked)))  # [B] z_{i,y_i}
    return (shift + sum_exp.log() - target).mean()


def sharded_forward(head: nn.Module, embeddings: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """FaceHead.forward_with_logits for a sharded classifier: this rank's embeddings [b, d] and labels [b]
    -> (loss dict over the global batch, this rank's logits [N·b, C_local]). The gathered labels are kept
    in `head.batch_labels` [N·b] for the accuracy; "loss" back-propagates with the 1/N of ops."""
    x, y = gather_rows(embeddings), gather_rows(labels)  # [N·b, d], [N·b]
    head.batch_labels = y
    c = head.classifier(x, y)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        logits = head.margin(c)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # [N·b, C_local], >= float32
        if head.dataset_mask is not None:  # DAIL: this shard's other-dataset columns leave the softmax
            logits = head.dataset_mask(logits, y, logit_columns(head.classifier))
        ce = sharded_cross_entropy(logits, c.labels)
        losses = {"loss": ce, "ce": ce}
        reg = head.margin.regularizer(c)
        if reg is not None:
            losses["reg"] = reg
            losses["loss"] = ce + reg
        losses["loss"] = replicated_loss(losses["loss"])
    return losses, logits


@torch.no_grad()
def sharded_correct(logits: Tensor, labels: Tensor, start: int, columns: Tensor | None) -> Tensor:
    """[N·b] bool: the highest logit over every rank's columns is the label's (ties: the lowest class id).
    logits [N·b, U] this rank's, labels [N·b] global, columns: class ids of the U columns (None: start + j)."""
    best, col = logits.max(dim=1)  # [B]
    ids = col + start if columns is None else columns[col]  # [B] class id of this rank's best column
    size = world()[1]
    bests, all_ids = [torch.empty_like(best) for _ in range(size)], [torch.empty_like(ids) for _ in range(size)]
    dist.all_gather(bests, best.contiguous())
    dist.all_gather(all_ids, ids.contiguous())
    winner = torch.stack(bests).argmax(dim=0)  # [B] first rank holding the max (rank order = class order)
    return torch.stack(all_ids).gather(0, winner[None]).squeeze(0) == labels
