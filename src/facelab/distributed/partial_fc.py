"""Partial FC (An et al. 2022, "Killing two birds with one stone: efficient and robust training of face
recognition CNNs by Partial FC"): each step, each shard of the classifier keeps the positive classes of
the (global) batch plus a uniform random subset of its other classes, so that about `sample_rate`·C_local
columns enter the softmax. The sample is drawn from a generator seeded by (seed, step, rank), so a resumed
run draws the same columns. The draw runs where the labels are (a CUDA generator on a GPU; the CPU and the
GPU streams differ, so a run resumed on the other kind of device draws other columns), without copying the
labels to the host, and it needs the number of positive classes (one device sync) only when the batch
could hold more than the rate keeps. Also: rank-independent initialisation of the class centres (a class gets the
same centre whatever the world size), used when the classifier is given a seed.
"""

import math

import numpy as np
import torch
from torch import Tensor

from facelab.errors import FacelabError

INIT_CHUNK = 1024  # classes per independently seeded block of the initial centres


def check_sample_rate(rate: object) -> float:
    ok = isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0.0 < rate <= 1.0
    if not ok:
        raise FacelabError(f"classifier: sample_rate={rate!r} is invalid: must be a real number in (0, 1]")
    return float(rate)


def generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded from the integers `key` (numpy SeedSequence: well-mixed, no overlap)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def sample_columns(local: Tensor, num_local: int, rate: float, key: tuple[int, int, int]) -> Tensor:
    """Sorted local class ids [U] on local's device: every class in `local` [B] (local labels, -1: another
    rank's) plus uniform random others, U = max(ceil(rate·num_local), #positives), drawn from
    generator(*key) on local's device."""
    score = torch.rand(num_local, generator=generator(*key, device=local.device), device=local.device)  # [C_local]
    positive = (local >= 0).to(score.dtype) * 2.0  # [B] 2 for a local label: above any uniform draw
    score = score.scatter_reduce(0, local.clamp(min=0), positive, reduce="amax")  # positives first
    keep = math.ceil(rate * num_local)
    if keep < min(len(local), num_local):  # the positives might outnumber the rate: count them (a sync)
        keep = max(keep, int((score >= 2.0).sum()))
    return score.topk(keep, sorted=False).indices.sort().values  # [U]


def seeded_normal(seed: int, start: int, end: int, sub: int, dim: int, std: float) -> Tensor:
    """Rows [(end - start)·sub, dim] of centres ~ N(0, std²) for classes [start, end), each block of
    INIT_CHUNK classes drawn from its own generator: equal to the same rows of the whole classifier's."""
    blocks = []
    for chunk in range(start // INIT_CHUNK, (end - 1) // INIT_CHUNK + 1):
        lo = chunk * INIT_CHUNK
        block = torch.empty(INIT_CHUNK * sub, dim).normal_(0.0, std, generator=generator(seed, chunk, 0))
        a, b = max(start, lo) - lo, min(end, lo + INIT_CHUNK) - lo
        blocks.append(block[a * sub : b * sub])
    return torch.cat(blocks)


def seeded_uniform(seed: int, start: int, end: int, low: float, high: float) -> Tensor:
    """Values [end - start] ~ U(low, high) for classes [start, end), blocked and seeded as seeded_normal."""
    blocks = []
    for chunk in range(start // INIT_CHUNK, (end - 1) // INIT_CHUNK + 1):
        lo = chunk * INIT_CHUNK
        block = torch.empty(INIT_CHUNK).uniform_(low, high, generator=generator(seed, chunk, 1))
        blocks.append(block[max(start, lo) - lo : min(end, lo + INIT_CHUNK) - lo])
    return torch.cat(blocks)
