"""The contract between a classifier and a margin (DESIGN.md)."""

from typing import NamedTuple

from torch import Tensor

from facelab.distributed.ops import all_reduce_sum


class Cosines(NamedTuple):
    """What a classifier hands a margin.

    cos:        [B, C_local] cosines to this rank's (sampled) class centres, clamped to [-1, 1].
                For the plain `softmax` baseline (a classifier built with normalize=False) these are
                the raw logits W·x + b instead; only that margin asks for them.
    labels:     [B] int64 target column in `cos`, -1 where the target lives on another rank.
    target_cos: [B] cos(theta_y) of every sample, shared across ranks.
    norms:      [B] feature norms |x| before normalisation (not detached).
    class_margins: [C_local] learnable per-class margins of the same (sampled) classes as the
                columns of `cos` (AdaM-Softmax), or None when the classifier keeps none (the
                default). A margin reads the target's margin at `labels` (rows with label -1 need
                none: their target column lives on another rank).
    world_size: how many ranks share the classes (1: this rank holds them all). A statistic a margin
                takes over classes goes through `sum_over_classes`, so that the margin never knows
                about sharding.
    columns:    [U] class id of each column of `cos` when the classifier selected columns (Hard
                Prototype Mining, Partial FC); None when the columns are this rank's classes in
                order.
    keep:       [B, C_local] bool, the columns that enter each sample's softmax under DAIL's
                dataset-aware softmax (facelab.heads.dataset_mask), or None when every column does.
                A margin that takes a statistic over the softmax's classes (AdaCos) reads it; the
                head masks the other columns after the margin.
    """

    cos: Tensor
    labels: Tensor
    target_cos: Tensor
    norms: Tensor
    class_margins: Tensor | None = None
    world_size: int = 1
    columns: Tensor | None = None
    keep: Tensor | None = None

    def sum_over_classes(self, t: Tensor) -> Tensor:
        """`t`, a sum over this rank's columns, summed over the columns of every rank
        (differentiable all-reduce, facelab.distributed.ops); `t` itself at world size 1."""
        return t if self.world_size == 1 else all_reduce_sum(t)
