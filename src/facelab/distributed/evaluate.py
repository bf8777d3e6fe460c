"""In-training verification on every rank: each rank embeds its share of a pair set's images, the
embeddings are all-gathered, and every rank computes the same metrics (no rank idles while one embeds)."""

import logging

import numpy as np
import torch.distributed as dist
from torch import nn

from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.eval.verification import verify_pairs

log = logging.getLogger(__name__)


def evaluate_pairsets_sharded(
    model: nn.Module, sets: dict[str, tuple[np.ndarray, np.ndarray]], **embed_kw: object
) -> dict[str, dict]:
    """facelab.eval.embed.evaluate_pairsets with the embedding split over ranks (contiguous shares in
    rank order); `embed_kw` go to embed_images. Collective: every rank must call it."""
    rank, size = dist.get_rank(), dist.get_world_size()
    results = {}
    for name, (images, same) in sets.items():
        same = np.asarray(same)
        if len(images) != 2 * len(same):
            raise FacelabError(f"pair set {name!r}: {len(images)} images for {len(same)} pairs (need 2 per pair)")
        bounds = np.linspace(0, len(images), size + 1).astype(int)  # [N + 1] share boundaries
        mine = embed_images(model, images[bounds[rank] : bounds[rank + 1]], **embed_kw)  # [n_r, d]
        shares = [None] * size
        dist.all_gather_object(shares, mine)
        emb = np.concatenate(shares)  # [2N, d] in image order
        results[name] = verify_pairs(emb[0::2], emb[1::2], same)
        if rank == 0:
            log.info("%s: accuracy %.4f ± %.4f", name, results[name]["accuracy"], results[name]["accuracy_std"])
    return results
