"""Dataset-aware softmax and crossing dropout (DAIL, Wang et al., ICPR 2020, arXiv 2101.05419,
Sec. 3.1-3.2).

The classifier is one matrix whose classes are the datasets' class spaces in contiguous blocks
(offsets [D + 1], facelab.data.multi). For a sample of dataset d the softmax denominator runs over
d's classes only:  L = -log( e^{f_y} / Σ_{j ∈ C_d} e^{f_j} ), f = the margin's logits. Crossing
dropout adds every class j of another dataset to that sum with probability p (per sample and step):
Σ_{j ∈ C_d} e^{f_j} + Σ_{j ∉ C_d} z_j e^{f_j}, z_j ~ Bernoulli(p).

Implemented as a column mask on the logits before the cross-entropy: a logit that leaves the sum
is set to MASKED (finite, so that a rank whose columns are all masked still has a finite
log-sum-exp when the classifier is sharded; e^{MASKED - max} is exactly 0 in float32, and the fill
has no gradient). The head gives the global class id of each column (selected columns under hard
prototype mining or Partial FC), so the mask is right for any shard and any column selection.

The crossing-dropout draw z_ij is a hash of (seed, step, row i of the batch, class id j), not a
generator's stream: a shard, or a sampled subset of columns, gets exactly the draws one process
holding every class gets for those columns (the sharded head's rows are the gathered global batch in
the same order), and it needs no host sync on a GPU.
"""

import math

import torch
from torch import Tensor

from facelab.data.multi import dataset_of
from facelab.errors import FacelabError

MASKED = -1e9


class DatasetMask:
    """Logits [B, C_cols] -> logits with other-dataset columns masked (except the crossing-dropout
    draws).

    `step` (`set_step`, every training step) and `seed` key the dropout draw, so a resumed run
    draws the same."""

    def __init__(self, offsets: list[int], crossing_dropout: float = 0.0, seed: int = 0) -> None:
        if (
            len(offsets) < 2
            or offsets[0] != 0
            or any(b <= a for a, b in zip(offsets, offsets[1:], strict=False))
        ):
            raise FacelabError(f"dataset mask: offsets {offsets} must start at 0 and increase")
        if not 0.0 <= crossing_dropout <= 1.0:
            raise FacelabError(
                f"dataset mask: crossing_dropout={crossing_dropout!r} must be in [0, 1]"
            )
        self.offsets = torch.tensor(offsets, dtype=torch.int64)  # [D + 1]
        self.p, self.seed, self.step = float(crossing_dropout), int(seed), 0

    def keep(self, labels: Tensor, columns: Tensor) -> Tensor:
        """[B, C_cols] bool: column j enters sample i's softmax. labels [B] global, columns [C_cols]
        global ids."""
        own = (
            dataset_of(labels, self.offsets)[:, None] == dataset_of(columns, self.offsets)[None, :]
        )
        if self.p == 0.0:
            return own
        rows = torch.arange(len(labels), device=labels.device)  # [B] position in the (global) batch
        # P(hash < threshold) = p to 2^-31; p = 1 keeps every column
        threshold = math.ceil(self.p * 2**31)
        drawn = cell_hash((self.seed, self.step), rows, columns) < threshold  # [B, C_cols]
        return own | drawn

    def __call__(self, logits: Tensor, labels: Tensor, columns: Tensor) -> Tensor:
        return logits.masked_fill(~self.keep(labels, columns.to(labels.device)), MASKED)

    def set_step(self, step: int) -> None:
        """The training step, which keys the crossing-dropout draw."""
        self.step = step


M31 = (1 << 31) - 1


def _mix(h: Tensor) -> Tensor:
    """A bijective integer hash of int64 values in [0, 2^31): add an odd constant (0 is no fixed
    point), then xor-shift-multiply rounds (the 32-bit finaliser constant 0x45d9f3b) reduced mod
    2^31, so that every product stays below 2^58 (no int64 overflow)."""
    h = (h + 0x61C88647) & M31
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & M31
    return h ^ (h >> 16)


def cell_hash(key: tuple[int, ...], rows: Tensor, columns: Tensor) -> Tensor:
    """[B, C] int64, uniform on [0, 2^31): a hash of (key, rows[i], columns[j]) for int64 rows [B]
    and columns [C] (ids below 2^31); the same (key, row, column) gives the same value whatever else
    is in `rows` and `columns`. Costs a few [B, C] int64 temporaries (twice the float32 logits'
    memory each)."""
    h = torch.zeros((), dtype=torch.int64, device=rows.device)
    for k in key:
        h = _mix(h ^ (int(k) & M31))
    per_row = _mix(h ^ rows.to(torch.int64))  # [B]
    return _mix(per_row[:, None] ^ columns.to(torch.int64)[None, :])  # [B, C]
