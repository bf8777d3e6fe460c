"""The contract between a classifier and a margin (DESIGN.md)."""

from typing import NamedTuple

from torch import Tensor


class Cosines(NamedTuple):
    """What a classifier hands a margin.

    cos:        [B, C_local] cosines to this rank's (sampled) class centres, clamped to [-1, 1].
                For the plain `softmax` baseline (a classifier built with normalize=False) these are
                the raw logits W·x + b instead; only that margin asks for them.
    labels:     [B] int64 target column in `cos`, -1 where the target lives on another rank.
    target_cos: [B] cos(theta_y) of every sample, shared across ranks.
    norms:      [B] feature norms |x| before normalisation (not detached).
    """

    cos: Tensor
    labels: Tensor
    target_cos: Tensor
    norms: Tensor
