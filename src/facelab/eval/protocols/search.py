"""1:N search metrics of probes searched in a gallery index (protocols/gallery_index.py).

Metrics follow protocols/identification.py (CMC rank-k, TPIR at FPIR; see its docstring). For an
exact index and a small gallery, `evaluate_search` calls `identification.search` on the full score
matrix. Otherwise it reads the index's top-K candidates (K = max rank): the rank of the best mate
is exact when the mate is among them and "> K" otherwise, so every CMC rank <= K and the TPIR
(which only needs the top-1) are exact for an exact index (ties at the K-th score aside) and are
the index's own results for IVF.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facelab.errors import FacelabError
from facelab.eval.protocols import identification
from facelab.eval.protocols.gallery_index import GalleryIndex, check_features, check_ids
from facelab.eval.protocols.identification import identification_metrics


def identity_templates(feats: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One template per identity: the mean feature, L2-normalised.

    Returns (templates float32 [U, d], the sorted unique ids [U]).
    """
    feats = check_features(feats, "template")
    ids = check_ids(ids, len(feats), "template")
    uniq, inverse = np.unique(ids, return_inverse=True)
    sums = np.zeros((len(uniq), feats.shape[1]), dtype=np.float64)  # [U, d]
    np.add.at(sums, inverse, feats)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)  # [U, 1]
    if (norms == 0).any():
        zero = uniq[np.flatnonzero(norms[:, 0] == 0)[0]]
        raise FacelabError(f"1:N search: the features of identity {zero!r} sum to zero")
    return (sums / norms).astype(np.float32), uniq


def ranks_from_topk(top_ids: np.ndarray, top_scores: np.ndarray, probe_ids: np.ndarray) -> tuple:
    """From top-K lists: (best mate score or -inf [P], its rank, K + 1 when absent [P])."""
    valid = top_scores > -np.inf  # IVF may return fewer than K candidates
    is_mate = (top_ids == probe_ids[:, None]) & valid  # [P, K]
    found = is_mate.any(1)
    first = is_mate.argmax(1)  # the lists are sorted, so the first mate is the best one
    mate = np.where(found, top_scores[np.arange(len(top_ids)), first], -np.inf)  # [P]
    beaten = (~is_mate) & valid & (top_scores >= mate[:, None])  # ties count against the probe
    rank = 1 + beaten.sum(1)
    return mate, np.where(found, rank, top_ids.shape[1] + 1)


def _metrics_from_topk(
    index: GalleryIndex, probes: np.ndarray, probe_ids: np.ndarray, ranks, fpirs
) -> dict:
    """identification.search's dict, computed from the index's top-max(ranks) candidates."""
    scores, rows = index.search(probes, max(ranks))  # [P, K]
    top_ids = index.ids[np.maximum(rows, 0)]  # [P, K]; rows -1 have score -inf and are masked out
    mate, rank = ranks_from_topk(top_ids, scores, probe_ids)
    top = scores[:, 0].astype(np.float64)
    mated = np.isin(probe_ids, index.ids)
    return identification_metrics(mate, rank, top, mated, len(index), ranks, fpirs)


def evaluate_search(
    index: GalleryIndex,
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
    full_limit: int = 1 << 26,
) -> dict:
    """CMC rank-k and TPIR@FPIR of probes [P, d] searched in `index` (identification.search's dict).

    Exact and numpy indexes with P * N <= full_limit use the full score matrix
    (identification.search); otherwise the index's top-max(ranks) candidates (see the module
    docstring for what is exact). "scoring" in the result says which: "full" or "top-k".
    """
    probes = check_features(probe_feats, "probe", index.dim)
    probe_ids = check_ids(probe_ids, len(probes), "probe")
    if not ranks or min(ranks) < 1:
        raise FacelabError(f"1:N search: ranks must be integers >= 1, got {tuple(ranks)}")
    if index.kind != "ivf" and len(probes) * len(index) <= full_limit:
        result = identification.search(probes, probe_ids, index.features(), index.ids, ranks, fpirs)
        return {**result, "index": index.kind, "scoring": "full"}
    result = _metrics_from_topk(index, probes, probe_ids, list(ranks), fpirs)
    return {**result, "index": index.kind, "scoring": "top-k"}
