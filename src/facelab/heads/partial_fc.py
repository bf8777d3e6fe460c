"""Partial FC (An et al. CVPR 2022, "Killing two birds with one stone: efficient and robust training
of face recognition CNNs by Partial FC"): each step, each shard of the classifier keeps the positive
classes of the (global) batch plus a uniform random subset of its other classes, so that about
`sample_rate`·C_local columns enter the softmax.

The sample is drawn from a generator seeded by (seed, step, rank), so a resumed run draws the same
columns. The draw runs where the labels are (a CUDA generator on a GPU; CPU and GPU streams differ,
so a run resumed on the other kind of device draws other columns), without copying the labels to the
host; it needs the number of positive classes (one device sync) only when the batch could hold more
than the rate keeps.
"""

import math

import torch
from torch import Tensor

from facelab.errors import FacelabError
from facelab.heads.init import generator


def check_sample_rate(rate: object) -> float:
    ok = isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0.0 < rate <= 1.0
    if not ok:
        rule = "must be a real number in (0, 1]"
        raise FacelabError(f"classifier: sample_rate={rate!r} is invalid: {rule}")
    return float(rate)


def sample_columns(local: Tensor, num_local: int, rate: float, key: tuple[int, int, int]) -> Tensor:
    """Sorted local class ids [U] on local's device: every class in `local` [B] (local labels, -1:
    another rank's) plus uniform random others, U = max(ceil(rate·num_local), #positives), drawn
    from generator(*key) on local's device."""
    gen = generator(*key, device=local.device)
    score = torch.rand(num_local, generator=gen, device=local.device)  # [C_local]
    positive = (local >= 0).to(score.dtype) * 2.0  # [B] 2 for a local label: above any uniform draw
    score = score.scatter_reduce(0, local.clamp(min=0), positive, reduce="amax")  # positives first
    keep = math.ceil(rate * num_local)
    if keep < min(len(local), num_local):  # positives might outnumber the rate: count them (a sync)
        keep = max(keep, int((score >= 2.0).sum()))
    return score.topk(keep, sorted=False).indices.sort().values  # [U]
