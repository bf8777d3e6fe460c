"""Decision thresholds for a deployed verifier, chosen on a validation pair set.

The verifier says "same" when the squared L2 distance of the two L2-normalised (flip-fused) embeddings
is below the threshold (the convention of eval/verification.py). Candidates are every distinct split of
the sorted distances (the lowest distance, the midpoints between neighbours, just above the largest);
we keep the first (lowest) candidate with the best accuracy, and the first with the best F1 of the
"same" class (F1 = 2·TP / (2·TP + FP + FN)). Picked and scored on the same pairs, these figures are
optimistic; the k-fold accuracy of verify_pairs is the one to report as a result.
"""

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.eval.verification import _less_counts, _midpoints, pair_distances, verify_pairs
from facelab.train.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def select_thresholds(distances: np.ndarray, same: np.ndarray) -> dict[str, dict[str, float]]:
    """{"accuracy": {threshold, accuracy}, "f1": {threshold, f1}} for distances [N] and same [N] bool."""
    d, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    candidates = _midpoints(d)  # [T] sorted
    tp, fp = _less_counts(d, same, candidates)  # [T] "same" predictions that are right / wrong
    n_same = int(same.sum())
    fn, tn = n_same - tp, (len(d) - n_same) - fp
    accuracy = (tp + tn) / len(d)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    a, f = int(np.argmax(accuracy)), int(np.argmax(f1))  # argmax: the first (lowest) best threshold
    return {
        "accuracy": {"threshold": float(candidates[a]), "accuracy": float(accuracy[a])},
        "f1": {"threshold": float(candidates[f]), "f1": float(f1[f])},
    }


def evaluate_with_thresholds(model: nn.Module, sets: dict[str, tuple[np.ndarray, np.ndarray]],
                             embed: Callable[..., np.ndarray] = embed_images,
                             **embed_kw) -> tuple[dict[str, dict], dict[str, dict]]:
    """(verify_pairs result, select_thresholds result) per pair set {name: (images [2N, H, W, 3], same [N])},
    pairs interleaved, from ONE embedding pass; embed_kw go to `embed` (embed_images, or the sharded
    facelab.distributed.evaluate.embed_images_sharded in a multi-process run)."""
    results, thresholds = {}, {}
    for name, (images, same) in sets.items():
        if len(images) != 2 * len(same):
            raise FacelabError(f"pair set {name!r}: {len(images)} images for {len(same)} pairs (need 2 per pair)")
        emb = embed(model, images, **embed_kw)  # [2N, d] L2-normalised, flip-fused
        results[name] = verify_pairs(emb[0::2], emb[1::2], same)
        thresholds[name] = select_thresholds(pair_distances(emb[0::2], emb[1::2]), same)
        log.info("%s: accuracy %.4f ± %.4f", name, results[name]["accuracy"], results[name]["accuracy_std"])
    return results, thresholds


def store_thresholds(checkpoint: Path, thresholds: dict) -> None:
    """Add `thresholds` ({pair set: select_thresholds result}) to a saved checkpoint, atomically."""
    ckpt = load_checkpoint(checkpoint)
    ckpt.pop("facelab_version", None)  # save_checkpoint writes the current one
    save_checkpoint(Path(checkpoint), {**ckpt, "thresholds": thresholds})


__all__ = ["evaluate_with_thresholds", "select_thresholds", "store_thresholds"]
