"""ROC as scikit-learn computes it (numpy only); TAR@FAR by the published nearest-FPR rule.

The "strict" TAR@FAR beside it: the largest TPR with FPR <= target on the full ROC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facelab.errors import FacelabError

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _roc_counts(labels: np.ndarray, scores: np.ndarray):
    """Per distinct score, highest first: (fps, tps, threshold) of accepting score >= threshold."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise FacelabError(f"ROC: labels {y.shape} and scores {s.shape} must be matching vectors")
    if y.all() or not y.any():
        raise FacelabError("ROC: need both positive and negative pairs")
    if not np.isfinite(s).all():
        raise FacelabError("ROC: scores contain NaN or inf")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # last index of each distinct score
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), len(s) - 1)
    tps = np.cumsum(y)[last]
    return last + 1 - tps, tps, s[last]


def _roc_from_counts(fps, tps, thr, drop_intermediate: bool):
    if drop_intermediate and len(fps) > 2:
        bend = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
        keep = np.concatenate([[True], bend, [True]])
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps, tps, thr = np.append(0, fps), np.append(0, tps), np.append(np.inf, thr)
    return fps / fps[-1], tps / tps[-1], thr


def roc_curve(labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True):
    """(fpr, tpr, thresholds) as scikit-learn's `roc_curve` computes them, numpy only.

    One point per distinct score (accept score >= threshold), highest threshold first, preceded by
    the (0, 0) point at threshold +inf. drop_intermediate removes points whose neighbours make equal
    steps in both FP and TP counts (collinear points), as scikit-learn does by default.
    """
    return _roc_from_counts(*_roc_counts(labels, scores), drop_intermediate)


def tar_at_far_nearest(fpr: np.ndarray, tpr: np.ndarray, far: float) -> int:
    """Index of the published rule's ROC point: FPR nearest `far`; among ties the largest TPR.

    insightface flips the (increasing) curve and takes the first minimum of |fpr - far|.
    """
    rev = np.abs(np.asarray(fpr)[::-1] - far)
    return len(fpr) - 1 - int(np.argmin(rev))


def tar_at_far_strict(fpr: np.ndarray, tpr: np.ndarray, far: float) -> int:
    """Index of the first ROC point with the largest TPR among those with FPR <= far."""
    ok = np.flatnonzero(np.asarray(fpr) <= far)  # never empty: fpr[0] == 0
    return int(ok[np.argmax(np.asarray(tpr)[ok])])


def _curve_for_plot(fpr: np.ndarray, tpr: np.ndarray, points: int = 2000) -> tuple[list, list]:
    """At most `points` (fpr, tpr) on a log FPR grid, each the largest TPR with FPR <= its value."""
    lo = fpr[fpr > 0].min()  # fpr ends at 1
    grid = np.geomspace(lo, 1.0, points)
    idx = np.searchsorted(fpr, grid, side="right") - 1
    return fpr[idx].tolist(), tpr[idx].tolist()


def _finite(x: float) -> float | None:
    """JSON-safe threshold: None for the +inf "accept nothing" point."""
    return float(x) if np.isfinite(x) else None


def verification_metrics(
    labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = FARS
) -> dict:
    """TAR@FAR by the published nearest-FPR rule and by the strict rule, thresholds, AUC, and a
    curve to plot."""
    labels = np.asarray(labels).astype(bool)
    counts = _roc_counts(labels, scores)
    # what the published rule reads
    fpr_p, tpr_p, thr_p = _roc_from_counts(*counts, drop_intermediate=True)
    fpr_s, tpr_s, thr_s = _roc_from_counts(*counts, drop_intermediate=False)
    near = [tar_at_far_nearest(fpr_p, tpr_p, f) for f in fars]
    strict = [tar_at_far_strict(fpr_s, tpr_s, f) for f in fars]
    key = [f"{f:g}" for f in fars]
    curve_fpr, curve_tpr = _curve_for_plot(fpr_s, tpr_s)
    return {
        "tar_at_far": {k: float(tpr_p[i]) for k, i in zip(key, near, strict=True)},
        "far_read": {k: float(fpr_p[i]) for k, i in zip(key, near, strict=True)},
        "threshold": {k: _finite(thr_p[i]) for k, i in zip(key, near, strict=True)},
        "tar_at_far_strict": {k: float(tpr_s[i]) for k, i in zip(key, strict, strict=True)},
        "threshold_strict": {k: _finite(thr_s[i]) for k, i in zip(key, strict, strict=True)},
        "auc": float(np.sum(np.diff(fpr_s) * (tpr_s[1:] + tpr_s[:-1])) / 2),  # trapezoids
        "pairs": int(len(labels)),
        "positives": int(labels.sum()),
        "negatives": int((~labels).sum()),
        "fpr": curve_fpr,
        "tpr": curve_tpr,
    }
