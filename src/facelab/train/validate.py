"""In-training verification on every rank: each rank embeds its share of a pair set's images and the
embeddings are all-gathered, so every rank computes the same metrics (no rank idles while one
embeds)."""

import numpy as np
import torch.distributed as dist
from torch import nn

from facelab.eval.embed import embed_images


def embed_images_sharded(model: nn.Module, images: np.ndarray, **embed_kw: object) -> np.ndarray:
    """facelab.eval.embed.embed_images with the images split over ranks (contiguous shares in rank
    order), then all-gathered: [N, d] on every rank. Collective: every rank must call it."""
    rank, size = dist.get_rank(), dist.get_world_size()
    bounds = np.linspace(0, len(images), size + 1).astype(int)  # [size + 1] share boundaries
    mine = embed_images(model, images[bounds[rank] : bounds[rank + 1]], **embed_kw)  # [n_r, d]
    shares = [None] * size
    dist.all_gather_object(shares, mine)
    return np.concatenate(shares)  # [N, d] in image order
