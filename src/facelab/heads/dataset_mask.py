"""Dataset-aware softmax and crossing dropout (DAIL, Wang et al., ICPR 2020, arXiv 2101.05419, Sec. 3.1-3.2).

The classifier is one matrix whose classes are the datasets' class spaces in contiguous blocks
(offsets [D + 1], facelab.data.multi). For a sample of dataset d the softmax denominator runs over
d's classes only:  L = -log( e^{f_y} / Σ_{j ∈ C_d} e^{f_j} ), f = the margin's logits. Crossing dropout
adds every class j of another dataset to that sum with probability p (per sample and step):
Σ_{j ∈ C_d} e^{f_j} + Σ_{j ∉ C_d} z_j e^{f_j}, z_j ~ Bernoulli(p).

Implemented as a column mask on the logits before the cross-entropy: a logit that leaves the sum is set
to MASKED (finite, so that a rank whose columns are all masked still has a finite log-sum-exp when the
classifier is sharded; e^{MASKED - max} is exactly 0 in float32, and the fill has no gradient). The
global class of each column is `classifier.start + local column`, or `classifier.columns` under hard
prototype mining, so the mask is right for any shard and any column selection.
"""

import torch
from torch import Tensor

from facelab.data.multi import dataset_of
from facelab.errors import FacelabError

MASKED = -1e9


class DatasetMask:
    """Logits [B, C_cols] -> logits with other-dataset columns masked (except the crossing-dropout draws).

    `step` (set by the trainer each step) and `seed` seed the dropout draw, so a resumed run draws the same."""

    def __init__(self, offsets: list[int], crossing_dropout: float = 0.0, seed: int = 0) -> None:
        if len(offsets) < 2 or offsets[0] != 0 or any(b <= a for a, b in zip(offsets, offsets[1:], strict=False)):
            raise FacelabError(f"dataset mask: offsets {offsets} must start at 0 and increase")
        if not 0.0 <= crossing_dropout <= 1.0:
            raise FacelabError(f"dataset mask: crossing_dropout={crossing_dropout!r} must be in [0, 1]")
        self.offsets = torch.tensor(offsets, dtype=torch.int64)  # [D + 1]
        self.p, self.seed, self.step = float(crossing_dropout), int(seed), 0

    def keep(self, labels: Tensor, columns: Tensor) -> Tensor:
        """[B, C_cols] bool: column j enters sample i's softmax. labels [B] global, columns [C_cols] global ids."""
        own = dataset_of(labels, self.offsets)[:, None] == dataset_of(columns, self.offsets)[None, :]
        if self.p == 0.0:
            return own
        gen = torch.Generator(device=labels.device)
        first = int(columns[0]) if len(columns) else 0  # a shard draws its own columns
        gen.manual_seed(self.seed * 1_000_003 + self.step * 7919 + first)
        drawn = torch.rand(own.shape, generator=gen, device=labels.device) < self.p  # [B, C_cols]
        return own | drawn

    def __call__(self, logits: Tensor, labels: Tensor, columns: Tensor) -> Tensor:
        return logits.masked_fill(~self.keep(labels, columns.to(labels.device)), MASKED)


def logit_columns(classifier) -> Tensor:
    """Global class id [C_cols] of every logit column of the classifier's last forward."""
    if classifier.columns is not None:
        return classifier.columns
    return torch.arange(classifier.start, classifier.end, device=classifier.weight.device)
