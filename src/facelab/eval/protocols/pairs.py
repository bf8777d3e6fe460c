"""Pair sets (insightface `.bin`, LFW pairs.txt once loaded): embed, then 10-fold verification.

A pair set is images [2N, H, W, 3] RGB uint8, pair i = images 2i and 2i+1 (the `.bin` layout of
facelab.data.pairsets), and same [N] bool. Each set is embedded in one pass (f(x) + f(flip x),
L2-normalised: facelab.eval.embed) and scored by insightface's 10-fold protocol (verify_pairs,
protocols/verification.py). From the same embeddings each result also carries the genuine and
impostor cosine histogram (the report's scores.png) and, when asked, the operating points of a
deployed verifier (select_thresholds, protocols/thresholds.py).
"""

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.eval.protocols.thresholds import select_thresholds
from facelab.eval.protocols.verification import pair_distances, verify_pairs
from facelab.eval.reports.plots import score_histogram

log = logging.getLogger(__name__)


def evaluate_pair_sets(
    model: nn.Module,
    sets: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    preprocess: dict | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    flip: bool = True,
    embed: Callable[..., np.ndarray] = embed_images,
    operating_points: bool = False,
    folds: int = 10,
    far_target: float = 1e-3,
    threshold_rule: str = "insightface",
    spread: str = "std",
) -> dict[str, dict]:
    """{set name: verify_pairs result + "histogram"} of every pair set {name: (images, same)}.

    embed(model, images, batch_size=, flip=, preprocess=, device=) gives the L2-normalised
    embeddings: embed_images, or facelab.train.validate.embed_images_sharded in a
    multi-process run (each rank embeds a share). operating_points: each result also holds
    "operating_points", the select_thresholds result of its distances.
    """
    results = {}
    for name, (images, same) in sets.items():
        same = np.asarray(same)
        if len(images) != 2 * len(same):
            raise FacelabError(
                f"pair set {name!r}: {len(images)} images for {len(same)} pairs (need 2 per pair)"
            )
        kw = {"batch_size": batch_size, "flip": flip, "preprocess": preprocess, "device": device}
        emb = embed(model, images, **kw)  # [2N, d]
        result = verify_pairs(
            emb[0::2],
            emb[1::2],
            same,
            folds=folds,
            far_target=far_target,
            threshold_rule=threshold_rule,
            spread=spread,
        )
        distances = pair_distances(emb[0::2], emb[1::2])  # [N]
        result["histogram"] = score_histogram(same, 1.0 - distances / 2.0)  # cosine of unit vectors
        if operating_points:
            result["operating_points"] = select_thresholds(distances, same)
        results[name] = result
        log.info("%s: accuracy %.4f ± %.4f", name, result["accuracy"], result["accuracy_std"])
    return results
