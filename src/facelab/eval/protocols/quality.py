"""Face image quality from feature norms (MagFace, AdaFace) and error-versus-reject curves.

MagFace (Meng et al. 2021) and AdaFace (Kim et al. 2022) train the feature norm a = |x| of the
un-normalised embedding to grow with recognisability, so a is the quality score. An
error-versus-reject curve (Grother & Tabassi 2007) checks a quality score: reject the
lowest-quality fraction of pairs and measure the false non-match rate (FNMR) of what is left at a
threshold fixed beforehand. A useful score gives a decreasing curve (plotted by
reports/plots.plot_error_versus_reject).

Conventions (also returned in the result): score = cosine of the two embeddings, "match" when
score > threshold; the threshold is set once on ALL pairs so that the false match rate is at most
`fmr` (1e-3): the k-th highest impostor score (0-based) with k = floor(fmr * impostors), so that at
most k impostor scores lie above it; pair quality = min of the two image qualities; a fraction f
rejects the floor(f * N) pairs (genuine and impostor alike) of lowest pair quality, ties in index
order; FNMR is over the genuine pairs kept (NaN when none is left).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from facelab.errors import FacelabError

FRACTIONS = tuple(i / 10 for i in range(10))  # 0, 0.1, ..., 0.9


def _matrix(x: object, what: str) -> np.ndarray:
    """[N, d] finite float64 array from a numpy array or tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "fiu":
        raise FacelabError(
            f"quality: {what} must be a real [N, d] array, got shape {x.shape} and dtype {x.dtype}"
        )
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise FacelabError(f"quality: {what} contains NaN or inf")
    return x


def _vector(x: object, n: int, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.shape != (n,):
        raise FacelabError(
            f"quality: {what} must have shape [{n}] (one value per pair), got {x.shape}"
        )
    return x


def feature_norm_quality(embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    """Quality score a = |x| [N] (float64) of un-normalised embeddings [N, d] (MagFace, AdaFace)."""
    return np.linalg.norm(_matrix(embeddings, "embeddings"), axis=1)


def fmr_threshold(impostor_scores: np.ndarray, fmr: float) -> float:
    """The k-th highest impostor score, k = floor(fmr * n): at most k impostors score above it."""
    desc = np.sort(impostor_scores)[::-1]
    return float(desc[min(int(math.floor(fmr * len(desc))), len(desc) - 1)])


def _check_fractions(fractions: object) -> list[float]:
    fr = [float(f) for f in np.asarray(fractions, dtype=np.float64).ravel()]
    if not fr or not all(0.0 <= f < 1.0 for f in fr):
        raise FacelabError(f"quality: fractions must be values in [0, 1), got {fractions!r}")
    return fr


def error_versus_reject(
    emb1: np.ndarray | torch.Tensor,
    emb2: np.ndarray | torch.Tensor,
    same: np.ndarray,
    quality1: np.ndarray,
    quality2: np.ndarray,
    fractions: tuple[float, ...] = FRACTIONS,
    fmr: float = 1e-3,
) -> dict:
    """FNMR (and FMR) after rejecting each fraction of lowest-quality pairs, at the threshold
    with FMR <= `fmr` on all pairs (module docstring). Pairs: rows of emb1, emb2 [N, d]; same [N].

    Returns {"fractions", "fnmr", "fmr", "genuine_kept", "impostor_kept": one value per fraction,
    "threshold", "fmr_target", "pairs", "convention"}.
    """
    e1, e2 = _matrix(emb1, "emb1"), _matrix(emb2, "emb2")
    if e1.shape != e2.shape:
        raise FacelabError(
            f"quality: emb1 and emb2 must have the same shape, got {e1.shape} and {e2.shape}"
        )
    n = e1.shape[0]
    same = _vector(same, n, "same")
    if same.dtype != bool and not (same.dtype.kind in "uif" and np.isin(same, (0, 1)).all()):
        raise FacelabError(f"quality: same must be boolean or 0/1, got dtype {same.dtype}")
    same = same.astype(bool)
    q1, q2 = _vector(quality1, n, "quality1"), _vector(quality2, n, "quality2")
    q = np.minimum(q1, q2).astype(np.float64)
    if not np.isfinite(q).all():
        raise FacelabError("quality: quality scores contain NaN or inf")
    if same.all() or not same.any():
        raise FacelabError("quality: error_versus_reject needs both genuine and impostor pairs")
    if not 0.0 < fmr < 1.0:
        raise FacelabError(f"quality: fmr={fmr!r} must be in (0, 1)")
    fr = _check_fractions(fractions)

    norm1 = e1 / np.maximum(np.linalg.norm(e1, axis=1, keepdims=True), 1e-12)
    norm2 = e2 / np.maximum(np.linalg.norm(e2, axis=1, keepdims=True), 1e-12)
    scores = np.sum(norm1 * norm2, axis=1)  # [N] cosine
    threshold = fmr_threshold(scores[~same], fmr)
    order = np.argsort(q, kind="stable")  # lowest quality first
    out = {"fractions": fr, "fnmr": [], "fmr": [], "genuine_kept": [], "impostor_kept": []}
    for f in fr:
        kept = order[int(math.floor(f * n + 1e-9)) :]
        gen, imp = scores[kept][same[kept]], scores[kept][~same[kept]]
        out["fnmr"].append(float(np.mean(gen <= threshold)) if len(gen) else math.nan)
        out["fmr"].append(float(np.mean(imp > threshold)) if len(imp) else math.nan)
        out["genuine_kept"].append(len(gen))
        out["impostor_kept"].append(len(imp))
    out.update(threshold=threshold, fmr_target=fmr, pairs=n)
    out["convention"] = (
        "cosine score, match if > threshold; threshold at FMR<=fmr on all pairs; "
        "pair quality = min; reject floor(f*N) lowest-quality pairs; FNMR over kept genuine pairs"
    )
    return out
