"""1:N identification (open-set search): CMC rank-k and TPIR at FPIR (IJB-B/C 1:N, NIST FRVT).

Every probe template is searched against every gallery template by cosine (matrix products in
blocks of probes, numpy). A probe whose subject has a gallery template is a mated search, the
others are non-mated.

- CMC rank-k: fraction of mated searches whose mate is among the k best gallery templates. Rank =
  1 + number of non-mate gallery templates scoring >= the best mate (ties count against the probe).
- TPIR at FPIR f: threshold t = the (floor(f * Nn) + 1)-th highest top-1 score of the Nn non-mated
  searches (-inf when that exceeds Nn); a search alarms when its top-1 score is > t, so
  FPIR(t) <= f, the largest such. TPIR = fraction of mated searches whose rank-1 candidate is the
  mate with score > t. With no non-mated search (a closed-set gallery) TPIR is undefined (None).

The IJB-C 1:N lists (`ijbc_1N_gallery_G1.csv`, `..._G2.csv`, `ijbc_1N_probe_mixed.csv`; IJB-B:
`S1`/`S2`) are comma-separated with a header row `TEMPLATE_ID,SUBJECT_ID,FILENAME,...` and one row
per image.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facelab.errors import FacelabError


def read_1n_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An IJB 1:N list -> (template ids [T] sorted unique int64, subject id of each [T] int64)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise FacelabError(f"{path}: cannot read ({e.strerror})") from None
    if not rows:
        raise FacelabError(f"{path}: empty file")
    header = [h.strip().upper() for h in rows[0]]
    if "TEMPLATE_ID" not in header or "SUBJECT_ID" not in header:
        raise FacelabError(f"{path}:1: header must name TEMPLATE_ID and SUBJECT_ID, got {rows[0]}")
    ti, si = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
    pairs = {}
    for lineno, row in enumerate(rows[1:], 2):
        if not row or not "".join(row).strip():
            continue
        try:
            t, s = int(row[ti]), int(row[si])
        except (ValueError, IndexError):
            raise FacelabError(
                f"{path}:{lineno}: TEMPLATE_ID and SUBJECT_ID must be integers, got {row}"
            ) from None
        if pairs.setdefault(t, s) != s:
            raise FacelabError(f"{path}:{lineno}: template {t} has subjects {pairs[t]} and {s}")
    if not pairs:
        raise FacelabError(f"{path}: no rows after the header")
    tids = np.array(sorted(pairs), dtype=np.int64)
    return tids, np.array([pairs[t] for t in tids], dtype=np.int64)


def merge_lists(*lists: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Union of several (template ids, subject ids) lists (a template listed twice must agree)."""
    tids = np.concatenate([t for t, _ in lists])
    sids = np.concatenate([s for _, s in lists])
    uniq, first = np.unique(tids, return_index=True)
    pos = np.searchsorted(uniq, tids)
    if (sids != sids[first][pos]).any():
        raise FacelabError("1:N lists disagree on the subject of a template")
    return uniq, sids[first]


def _check(feats: np.ndarray, ids: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    feats, ids = np.asarray(feats, dtype=np.float64), np.asarray(ids)
    if feats.ndim != 2 or ids.shape != (len(feats),) or len(feats) == 0:
        raise FacelabError(
            f"1:N search: {what} features must be [n, d] with n ids, got {feats.shape}, {ids.shape}"
        )
    return feats, ids


def _search_blocks(probes, probe_ids, gallery, gallery_ids, block: int):
    """Per probe: (best mate score or -inf, rank of the best mate, top-1 score). [P] each."""
    mate = np.full(len(probes), -np.inf)
    rank = np.zeros(len(probes), dtype=np.int64)
    top = np.empty(len(probes))
    for s in range(0, len(probes), block):
        sim = probes[s : s + block] @ gallery.T  # [b, G]
        same = probe_ids[s : s + block, None] == gallery_ids[None, :]  # [b, G]
        m = np.where(same, sim, -np.inf).max(1)  # [b]
        others = np.where(same, -np.inf, sim)
        mate[s : s + block] = m
        rank[s : s + block] = 1 + (others >= m[:, None]).sum(1)
        top[s : s + block] = sim.max(1)
    return mate, rank, top


def _fpir_threshold(non_mated_top: np.ndarray, fpir: float) -> float:
    """Largest-FPIR threshold with FPIR <= fpir (alarm when score > threshold)."""
    ordered = np.sort(non_mated_top)[::-1]
    k = int(np.floor(fpir * len(ordered) + 1e-9))  # false alarms allowed
    return float(ordered[k]) if k < len(ordered) else -np.inf


def search(
    probe_feats: np.ndarray,
    probe_ids: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_ids: np.ndarray,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
    block: int | None = None,
) -> dict:
    """CMC at `ranks` and TPIR at `fpirs` of L2-normalised probe [P, d] vs gallery [G, d]."""
    probes, probe_ids = _check(probe_feats, probe_ids, "probe")
    gallery, gallery_ids = _check(gallery_feats, gallery_ids, "gallery")
    if probes.shape[1] != gallery.shape[1]:
        raise FacelabError(
            f"1:N search: probe dim {probes.shape[1]} != gallery dim {gallery.shape[1]}"
        )
    block = block or max(1, (1 << 24) // len(gallery))
    mate, rank, top = _search_blocks(probes, probe_ids, gallery, gallery_ids, block)
    mated = np.isin(probe_ids, gallery_ids)
    return identification_metrics(mate, rank, top, mated, len(gallery), ranks, fpirs)


def identification_metrics(
    mate: np.ndarray,
    rank: np.ndarray,
    top: np.ndarray,
    mated: np.ndarray,
    gallery_size: int,
    ranks: Sequence[int],
    fpirs: Sequence[float],
) -> dict:
    """CMC and TPIR@FPIR from per-probe results [P]: best mate score (-inf when absent), its
    rank, the top score of the whole gallery, and whether the probe's identity is enrolled."""
    nm_top = top[~mated]
    cmc = {str(k): (float(np.mean(rank[mated] <= k)) if mated.any() else None) for k in ranks}
    tpir, achieved, thresholds = {}, {}, {}
    for f in fpirs:
        key = f"{f:g}"
        if not (~mated).any() or not mated.any():
            tpir[key] = achieved[key] = thresholds[key] = None
            continue
        t = _fpir_threshold(nm_top, f)
        hit = (rank[mated] == 1) & (mate[mated] > t)
        tpir[key], achieved[key] = float(hit.mean()), float(np.mean(nm_top > t))
        thresholds[key] = t if np.isfinite(t) else None  # None: every non-mated search may alarm
    return {
        "probes": int(len(rank)),
        "mated": int(mated.sum()),
        "non_mated": int((~mated).sum()),
        "gallery": int(gallery_size),
        "cmc": cmc,
        "tpir_at_fpir": tpir,
        "fpir_achieved": achieved,
        "threshold": thresholds,
    }


def mean_results(results: Sequence[dict]) -> dict:
    """Plain mean over galleries (IJB-C reports G1 and G2 averaged) of every CMC and TPIR entry."""

    def avg(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    first = results[0]
    return {
        "probes": first["probes"],
        "cmc": {k: avg([r["cmc"][k] for r in results]) for k in first["cmc"]},
        "tpir_at_fpir": {
            k: avg([r["tpir_at_fpir"][k] for r in results]) for k in first["tpir_at_fpir"]
        },
    }
