"""Comparing results of two float computation paths (batch sizes, CPU kernels / ISA, thread
counts, an ONNX reload, several processes): never bit for bit. Continuous values agree to a
tolerance of float32 rounding; a discrete result (an accuracy, a rank) may take every value that
distances moved within that tolerance can give, and is exactly equal only where no distance lies
that close to a decision boundary. Results of one path (same batch, threads and machine) are
compared exactly by the tests themselves.
"""

import itertools

import numpy as np

from facelab.eval.protocols.verification import verify_pairs

# Squared L2 distances (and cosines) of L2-normalised float32 embeddings of one model computed by
# two paths agree to DIST_TOL: 20x the largest spread measured with the tiny backbone between
# AVX-512, AVX2 and no-SIMD kernels (ATEN_CPU_CAPABILITY), batch sizes 1-40, 1-3 threads and
# onnxruntime against torch (5e-7; an AMX machine differed by 2.4e-9), i.e.
# about 100 eps32 (1.2e-7) on values of order 1.
DIST_TOL = 1e-5


def fold_accuracies_within(d, same, tol: float, folds: int = 10) -> set[tuple[float, ...]]:
    """Every verify_pairs fold_accuracies (insightface rule) of distances within ±tol of d [N].

    They depend on the distances only through d < t for the grid t = 0, 0.01, ..., 3.99: only a
    pair with a grid point within tol of its distance can change side, and each such pair is tried
    on both sides. One value when no pair is that close: two paths then agree exactly (and so do
    the accuracy and its spread, functions of the fold accuracies).
    """
    d = np.asarray(d, np.float64)
    grid = np.arange(0, 4, 0.01)
    gap = np.abs(d[:, None] - grid)  # [N, T]
    near = np.flatnonzero(gap.min(1) <= tol)
    assert len(near) <= 10, f"{len(near)} distances within {tol} of the grid: not a rounding tol"
    found = set()
    for sides in itertools.product((-1e-9, 1e-9), repeat=len(near)):  # >> float64 rounding
        x = d.copy()
        x[near] = np.maximum(grid[gap[near].argmin(1)] + np.array(sides), 0.0)  # distances >= 0
        root = np.sqrt(x)[:, None]  # 1-d embeddings whose distance to 0 is x
        result = verify_pairs(root, np.zeros_like(root), same, folds=folds)
        found.add(tuple(result["fold_accuracies"]))
    return found
