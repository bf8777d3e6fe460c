"""Partial FC (An et al. 2022, "Killing two birds with one stone: efficient and robust training of face
recognition CNNs by Partial FC"): each step, each shard of the classifier keeps the positive classes of
the (global) batch plus a uniform random subset of its other classes, so that about `sample_rate`·C_local
columns enter the softmax. The sample is drawn from a generator seeded by (seed, step, rank), so a resumed
run draws the same columns. Also: rank-independent initialisation of the class centres (a class gets the
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


def generator(*key: int) -> torch.Generator:
    """A CPU torch generator seeded from the integers `key` (numpy SeedSequence: well-mixed, no overlap)."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def sample_columns(local: Tensor, num_local: int, rate: float, key: tuple[int, int, int]) -> Tensor:
    """Sorted local class ids [U]: every class in `local` [B] (local labels, -1: another rank's) plus
    uniform random others, U = max(ceil(rate·num_local), #positives), drawn from generator(*key)."""
    positive = torch.zeros(num_local, dtype=torch.bool)
    positive[local[local >= 0].cpu()] = True
    keep = max(math.ceil(rate * num_local), int(positive.sum()))
    noise = torch.rand(num_local, generator=generator(*key))  # [C_local] one uniform score per class
    noise[positive] = 2.0  # positives first: scores above any uniform draw
    chosen = noise.topk(keep).indices  # [U]
    return chosen.sort().values.to(local.device)


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
