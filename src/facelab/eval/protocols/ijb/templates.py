"""IJB modes (N?D?F?), image -> media -> template pooling, and template-pair cosine scores."""

from __future__ import annotations

import logging
import re

import numpy as np
from scipy import sparse

from facelab.errors import FacelabError

log = logging.getLogger(__name__)

DEFAULT_MODE = (
    "N0D1F1"  # insightface's published setting: raw norms kept, detector score, flip added
)


def parse_mode(mode: str) -> dict[str, bool]:
    """ "N0D1F1" -> {"normalise": False, "detector": True, "flip": True}."""
    m = re.fullmatch(r"N([01])D([01])F([01])", mode)
    if not m:
        raise FacelabError(
            "IJB mode must look like N0D1F1 (N: normalise, D: detector score, F: flip), "
            f"got {mode!r}"
        )
    return {"normalise": m[1] == "1", "detector": m[2] == "1", "flip": m[3] == "1"}


def image_features(
    feats: np.ndarray,
    flip_feats: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    mode: str = DEFAULT_MODE,
) -> np.ndarray:
    """Per-image features before pooling, float64 [N, d]: (+ flip) -> (L2-normalise) ->
    (x detector score)."""
    opts = parse_mode(mode)
    x = np.asarray(feats, dtype=np.float64)
    if opts["flip"]:
        if flip_feats is None:
            raise FacelabError(f"IJB mode {mode}: F1 needs the flipped-image features")
        x = x + np.asarray(flip_feats, dtype=np.float64)
    if opts["normalise"]:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms == 0, 1.0, norms)
    if opts["detector"]:
        if scores is None:
            raise FacelabError(f"IJB mode {mode}: D1 needs the detector scores")
        x = x * np.asarray(scores, dtype=np.float64)[:, None]
    return x


def template_features(
    feats: np.ndarray, templates: np.ndarray, medias: np.ndarray, select: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted template ids [T], L2-normalised template features float64 [T, d]).

    Template = sum over its media of the mean image feature within each media, computed as one
    sparse product W @ feats with W[t, i] = 1 / (number of images of image i's media in template t).
    `select`:
    only these template ids (each must have images). A template whose sum is zero stays zero.
    """
    templates, medias = np.asarray(templates), np.asarray(medias)
    feats = np.asarray(feats, dtype=np.float64)
    if select is not None:
        want = np.unique(select)
        absent = ~np.isin(want, templates)
        if absent.any():
            raise FacelabError(
                f"IJB: {int(absent.sum())} template id(s) have no images, e.g. {want[absent][0]}"
            )
        keep = np.isin(templates, want)
        feats, templates, medias = feats[keep], templates[keep], medias[keep]
    tids, t_idx = np.unique(templates, return_inverse=True)
    m_ids, m_idx = np.unique(medias, return_inverse=True)
    _, group, count = np.unique(t_idx * len(m_ids) + m_idx, return_inverse=True, return_counts=True)
    weights = sparse.csr_matrix(
        (1.0 / count[group], (t_idx, np.arange(len(t_idx)))), (len(tids), len(t_idx))
    )
    tf = np.asarray(weights @ feats)  # [T, d]
    norms = np.linalg.norm(tf, axis=1, keepdims=True)
    if (norms == 0).any():
        log.warning("IJB: %d template feature(s) are zero", int((norms == 0).sum()))
    return tids, tf / np.where(norms == 0, 1.0, norms)


def pair_scores(
    tids: np.ndarray, tfeats: np.ndarray, pairs: np.ndarray, chunk: int = 1 << 25
) -> np.ndarray:
    """Cosine of each template pair [P] float64; tids sorted (template_features). chunk: floats per
    block.

    IJB pairs join few first templates to many second ones: when the (distinct firsts x distinct
    seconds) score matrix is at most 4x the pair count it is computed by blocks of matrix products
    and read out; otherwise the pairs' features are gathered and dotted block by block.
    """
    pos = np.searchsorted(tids, pairs).clip(0, len(tids) - 1)  # [P, 2]
    bad = tids[pos] != pairs
    if bad.any():
        n = int(bad.any(1).sum())
        raise FacelabError(
            f"IJB: {n} pair(s) name templates without images, e.g. template {pairs[bad][0]}"
        )
    u1, i1 = np.unique(pos[:, 0], return_inverse=True)
    u2, i2 = np.unique(pos[:, 1], return_inverse=True)
    out = np.empty(len(pairs))
    if len(u1) * len(u2) <= 4 * len(pairs):
        by_first = np.argsort(i1, kind="stable")
        bounds = np.searchsorted(i1[by_first], np.arange(len(u1) + 1))
        second = tfeats[u2].T  # [d, U2]
        rows = max(1, chunk // len(u2))
        for r in range(0, len(u1), rows):
            block = tfeats[u1[r : r + rows]] @ second  # [b, U2]
            sel = by_first[bounds[r] : bounds[min(r + rows, len(u1))]]
            out[sel] = block[i1[sel] - r, i2[sel]]
        return out
    step = max(1, chunk // tfeats.shape[1])
    for s in range(0, len(pairs), step):
        a, b = tfeats[pos[s : s + step, 0]], tfeats[pos[s : s + step, 1]]
        out[s : s + step] = np.einsum("ij,ij->i", a, b)
    return out
