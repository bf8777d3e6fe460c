"""evaluate_pairsets: embed each named pair set and run verify_pairs on it (pairs interleaved)."""

import logging

import numpy as np
from torch import nn

from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.eval.protocols.verification import verify_pairs

log = logging.getLogger(__name__)

_EMBED_KW = ("batch_size", "flip", "preprocess", "device")
_VERIFY_KW = ("folds", "far_target", "threshold_rule", "spread")


def evaluate_pairsets(
    model: nn.Module, sets: dict[str, tuple[np.ndarray, np.ndarray]], **kw
) -> dict[str, dict]:
    """verify_pairs on each named pair set {name: (images [2N, H, W, 3], same [N])}.

    Pairs are interleaved in images. Keyword arguments go to embed_images (batch_size, flip,
    preprocess, device) or verify_pairs (folds, far_target, threshold_rule, spread).
    Returns {name: verify_pairs result}.
    """
    unknown = set(kw) - set(_EMBED_KW) - set(_VERIFY_KW)
    if unknown:
        raise FacelabError(f"evaluate_pairsets: unknown option(s) {sorted(unknown)}")
    embed_kw = {k: v for k, v in kw.items() if k in _EMBED_KW}
    verify_kw = {k: v for k, v in kw.items() if k in _VERIFY_KW}
    results = {}
    for name, (images, same) in sets.items():
        same = np.asarray(same)
        if len(images) != 2 * len(same):
            raise FacelabError(
                f"pair set {name!r}: {len(images)} images for {len(same)} pairs (need 2 per pair)"
            )
        emb = embed_images(model, images, **embed_kw)  # [2N, d]
        results[name] = verify_pairs(emb[0::2], emb[1::2], same, **verify_kw)
        acc, std = results[name]["accuracy"], results[name]["accuracy_std"]
        log.info("%s: accuracy %.4f ± %.4f", name, acc, std)
    return results
