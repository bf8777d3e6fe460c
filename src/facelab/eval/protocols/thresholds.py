"""Decision thresholds for a deployed verifier, chosen on a validation pair set.

The verifier says "same" when the squared L2 distance of the two L2-normalised (flip-fused)
embeddings is below the threshold (the convention of protocols/verification.py). Candidates are
every distinct split of the sorted distances (the lowest distance, the midpoints between
neighbours, just above the largest); we keep the first (lowest) candidate with the best accuracy,
and the first with the best F1 of the "same" class (F1 = 2 TP / (2 TP + FP + FN)). Picked and
scored on the same pairs, these figures are optimistic; the k-fold accuracy of verify_pairs is the
one to report as a result.
"""

from pathlib import Path

import numpy as np

from facelab.eval.protocols.verification import _less_counts, _midpoints
from facelab.model import load_checkpoint, save_checkpoint


def select_thresholds(distances: np.ndarray, same: np.ndarray) -> dict[str, dict[str, float]]:
    """{"accuracy": {threshold, accuracy}, "f1": {threshold, f1}} of distances [N], same [N]."""
    d, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    candidates = _midpoints(d)  # [T] sorted
    tp, fp = _less_counts(d, same, candidates)  # [T] "same" predictions that are right / wrong
    n_same = int(same.sum())
    fn, tn = n_same - tp, (len(d) - n_same) - fp
    accuracy = (tp + tn) / len(d)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    a, f = int(np.argmax(accuracy)), int(np.argmax(f1))  # argmax: the first (lowest) best one
    return {
        "accuracy": {"threshold": float(candidates[a]), "accuracy": float(accuracy[a])},
        "f1": {"threshold": float(candidates[f]), "f1": float(f1[f])},
    }


def store_thresholds(checkpoint: Path, thresholds: dict) -> None:
    """Add `thresholds` ({pair set: select_thresholds result}) to a saved checkpoint, atomically."""
    ckpt = load_checkpoint(checkpoint)
    ckpt.pop("facelab_version", None)  # save_checkpoint writes the current one
    save_checkpoint(Path(checkpoint), {**ckpt, "thresholds": thresholds})


__all__ = ["select_thresholds", "store_thresholds"]
