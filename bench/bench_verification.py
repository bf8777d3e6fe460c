"""verify_pairs (vectorised) against verify_pairs_reference (insightface's loops) on 6000 pairs.

Data: 512-d unit embeddings; a "different" pair is two independent directions, a "same" pair shares a
direction with cosine ~ N(0.15, 0.08), so 10-fold accuracy lands near 90% and the distance
distributions overlap like a weak model's. Both must give identical results; prints both times and the ratio.
"""

import time

import numpy as np
from tests.references.verification import verify_pairs_reference

from facelab.eval.protocols.verification import verify_pairs

KEYS = ("accuracy", "accuracy_std", "fold_accuracies", "thresholds", "val", "val_std", "far", "tpr", "fpr")


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def make_pairs(n: int = 6000, dim: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """emb1, emb2 float32 [n, dim] unit rows and same [n] bool (half same, shuffled)."""
    rng = np.random.default_rng(seed)
    same = rng.permutation(np.arange(n) % 2 == 0)
    e1 = _unit(rng.standard_normal((n, dim)))
    other = _unit(rng.standard_normal((n, dim)))  # a different identity: independent direction
    ortho = _unit(other - np.sum(other * e1, axis=1, keepdims=True) * e1)
    cos = np.clip(rng.normal(0.15, 0.08, n), -1, 1)[:, None]  # same identity: shared direction
    e2 = np.where(same[:, None], cos * e1 + np.sqrt(1 - cos**2) * ortho, other)
    return e1.astype(np.float32), e2.astype(np.float32), same


def _best_time(fn, repeats: int) -> tuple[float, dict]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> dict:
    e1, e2, same = make_pairs()
    verify_pairs(e1, e2, same)  # warm-up
    t_fast, fast = _best_time(lambda: verify_pairs(e1, e2, same), 5)
    t_ref, ref = _best_time(lambda: verify_pairs_reference(e1, e2, same), 2)
    diff = [k for k in KEYS if fast[k] != ref[k]]
    print(
        f"pairs {len(same)}  accuracy {fast['accuracy']:.4f} ± {fast['accuracy_std']:.4f}  "
        f"VAL {fast['val']:.4f} @ FAR {fast['far']:.5f}"
    )
    print(
        f"reference loop {t_ref * 1e3:.1f} ms  vectorised {t_fast * 1e3:.2f} ms  ratio {t_ref / t_fast:.1f}x "
        f"(best of 2 / 5 runs)"
    )
    if diff:
        raise AssertionError(f"verify_pairs differs from the reference in {diff}")
    print("identical: " + ", ".join(KEYS))
    return {"reference_s": t_ref, "vectorised_s": t_fast, "ratio": t_ref / t_fast}


if __name__ == "__main__":
    main()
