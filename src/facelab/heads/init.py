"""Seeded, rank-independent initialisation of per-class parameters: a class gets the same centre
(and per-class margin) whatever the world size, so runs can be resharded and compared across world
sizes. Classes are drawn in blocks of INIT_CHUNK, each from its own generator keyed by (seed, block,
kind).
"""

import numpy as np
import torch
from torch import Tensor

INIT_CHUNK = 1024  # classes per independently seeded block of the initial centres


def generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded from the integers `key` (numpy SeedSequence:
    well-mixed, no overlap)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)
    seed = int(state[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def seeded_normal(seed: int, start: int, end: int, sub: int, dim: int, std: float) -> Tensor:
    """Rows [(end - start)·sub, dim] of centres ~ N(0, std²) for classes [start, end), each block
    of INIT_CHUNK classes drawn from its own generator: equal to the same rows of the whole
    classifier's."""
    blocks = []
    for chunk in range(start // INIT_CHUNK, (end - 1) // INIT_CHUNK + 1):
        lo = chunk * INIT_CHUNK
        block = torch.empty(INIT_CHUNK * sub, dim).normal_(
            0.0, std, generator=generator(seed, chunk, 0)
        )
        a, b = max(start, lo) - lo, min(end, lo + INIT_CHUNK) - lo
        blocks.append(block[a * sub : b * sub])
    return torch.cat(blocks)


def seeded_uniform(seed: int, start: int, end: int, low: float, high: float) -> Tensor:
    """Values [end - start] ~ U(low, high) for classes [start, end), blocked and seeded as
    seeded_normal."""
    blocks = []
    for chunk in range(start // INIT_CHUNK, (end - 1) // INIT_CHUNK + 1):
        lo = chunk * INIT_CHUNK
        block = torch.empty(INIT_CHUNK).uniform_(low, high, generator=generator(seed, chunk, 1))
        blocks.append(block[max(start, lo) - lo : min(end, lo + INIT_CHUNK) - lo])
    return torch.cat(blocks)
