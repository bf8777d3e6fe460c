"""Pair verification (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW): 10-fold accuracy and VAL@FAR.

The default reproduces insightface's published `eval/verification.py` protocol exactly (METHODS.md,
"Evaluation protocols"): distance = squared L2 of L2-normalised embeddings; predict "same" when
dist < threshold; thresholds 0, 0.01, ..., 3.99; contiguous folds without shuffle (scikit-learn
KFold sizes); per fold the first threshold with the best accuracy on the other folds is applied to
the held-out fold; mean and std (ddof 0) of the fold accuracies. VAL@FAR: thresholds 0, 0.001, ...,
3.999; per fold the threshold where the training FAR reaches the target, by
`interp1d(far, thresholds, kind="slinear")` with the tie semantics of scipy < 1.9
(`interp1d_slinear`; newer scipy rejects the repeated FAR values), or 0.0 when the target FAR is
never reached; then VAL and FAR on the held-out fold.

`verify_pairs` counts TP/FP for all thresholds at once (sorted distances + `np.searchsorted`); it
gives results identical to a plain loop transcription of insightface's code
(tests/references/verification.py).
"""

from __future__ import annotations

import logging

import numpy as np

from facelab.errors import FacelabError

log = logging.getLogger(__name__)

THRESHOLD_RULES = ("insightface", "exact")
SPREADS = {"std": "std (ddof 0)", "sem": "sem = std (ddof 1) / sqrt(folds)"}


def fold_bounds(n: int, folds: int) -> list[tuple[int, int]]:
    """[start, stop) of each contiguous fold; the first n % folds hold one extra pair (KFold)."""
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    stops = np.cumsum(sizes)
    return [(int(b - s), int(b)) for b, s in zip(stops, sizes, strict=True)]


def _splits(n: int, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays; one fold trains and tests on everything (insightface LFold)."""
    idx = np.arange(n)
    if folds == 1:
        return [(idx, idx)]
    return [(np.concatenate([idx[:a], idx[b:]]), idx[a:b]) for a, b in fold_bounds(n, folds)]


def pair_distances(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Squared L2 distance per pair [N] in float64, as insightface (its buffers are float64)."""
    e1, e2 = np.asarray(emb1, dtype=np.float64), np.asarray(emb2, dtype=np.float64)
    return np.sum(np.square(np.subtract(e1, e2)), 1)


def interp1d_slinear(x: np.ndarray, y: np.ndarray, at: float) -> np.ndarray:
    """`scipy.interpolate.interp1d(x, y, kind="slinear")(at)` as scipy 1.6-1.8 computed it.

    insightface's VAL threshold interpolates FAR, whose values repeat (runs of equal FAR); scipy
    >= 1.9 refuses repeated x ("Expect x to not have duplicates"), older scipy built the degree-1
    B-spline with knots [x0, x, x_last] and coefficients y (stable sort first) and evaluated it by
    de Boor. On an interval between two runs this interpolates from the LAST point of the lower run
    to the FIRST point of the upper run. Same floating-point operations as scipy's `_deBoor_D` +
    `evaluate_spline`, so the result equals today's interp1d bit for bit where x has no repeats.
    `at` must lie in [min x, max x]. Returns a 0-d float64 array, as interp1d does.
    """
    order = np.argsort(x, kind="stable")
    x, y = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    t = np.concatenate([x[:1], x, x[-1:]])  # knots, k = 1
    ell = min(int(np.searchsorted(t, at, side="right")), len(x)) - 1  # t[ell] <= at < t[ell + 1]
    xa, xb = t[ell], t[ell + 1]
    if xb == xa:
        return np.asarray(0.0)
    w = 1.0 / (xb - xa)
    h0, h1 = 0.0 + w * (xb - at), w * (at - xa)
    return np.asarray((0.0 + y[ell - 1] * h0) + y[ell] * h1)


def _as_same(same: np.ndarray, n: int) -> np.ndarray:
    same = np.asarray(same)
    if same.ndim != 1 or len(same) != n:
        raise FacelabError(
            f"verify_pairs: `same` must have shape [{n}] (one label per pair), got {same.shape}"
        )
    if same.dtype != bool:
        ok = same.dtype.kind in "uif" and np.isin(same, (0, 1)).all()
        if not ok:
            raise FacelabError(
                f"verify_pairs: `same` must be boolean or 0/1, got dtype {same.dtype}"
            )
    return same.astype(bool)


def _check_inputs(emb1: np.ndarray, emb2: np.ndarray, same: np.ndarray, folds: int) -> np.ndarray:
    if emb1.ndim != 2 or emb1.shape != emb2.shape:
        raise FacelabError(
            f"verify_pairs: emb1 and emb2 must both be [N, d], got {emb1.shape} and {emb2.shape}"
        )
    if emb1.dtype.kind not in "fiu" or emb2.dtype.kind not in "fiu":
        raise FacelabError(
            f"verify_pairs: embeddings must be real numbers, got {emb1.dtype} and {emb2.dtype}"
        )
    if not (np.isfinite(emb1).all() and np.isfinite(emb2).all()):
        raise FacelabError("verify_pairs: embeddings contain NaN or inf")
    if not isinstance(folds, (int, np.integer)) or isinstance(folds, bool) or folds < 1:
        raise FacelabError(f"verify_pairs: folds must be a positive integer, got {folds!r}")
    n = emb1.shape[0]
    if n < folds:
        raise FacelabError(f"verify_pairs: {n} pairs is fewer than folds={folds}")
    same = _as_same(same, n)
    for k, (_, test) in enumerate(_splits(n, folds)):
        if same[test].all() or not same[test].any():
            kind = "different" if same[test].all() else "same"
            raise FacelabError(
                f"verify_pairs: fold {k} (pairs {test[0]}..{test[-1]}) has no {kind} pairs; "
                "each contiguous fold needs both (are the pairs sorted by label?)"
            )
    return same


def _less_counts(
    d: np.ndarray, same: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold, how many same (tp) and different (fp) pairs have dist < threshold. [T], [T]"""
    tp = np.searchsorted(np.sort(d[same]), thresholds, side="left")
    fp = np.searchsorted(np.sort(d[~same]), thresholds, side="left")
    return tp, fp


def _midpoints(d: np.ndarray) -> np.ndarray:
    """Exact sweep: a threshold per distinct split of sorted distances (none, midpoints, all)."""
    u = np.unique(d)  # sorted
    return np.concatenate([u[:1], (u[:-1] + u[1:]) / 2, [np.nextafter(u[-1], np.inf)]])


def _grid(rule: str, d: np.ndarray, step: float) -> np.ndarray:
    return np.arange(0, 4, step) if rule == "insightface" else _midpoints(d)


def _best_threshold(d, same, train, rule: str) -> float:
    """First threshold (argmax) with the best accuracy on the training pairs."""
    grid = _grid(rule, d[train], 0.01)
    tp, fp = _less_counts(d[train], same[train], grid)
    n_diff = int((~same[train]).sum())
    acc = (tp + (n_diff - fp)) / len(train)
    return grid[int(np.argmax(acc))]


def _val_threshold(d, same, train, rule: str, far_target: float):
    """Threshold where the training FAR reaches far_target (slinear interp1d), else 0.0."""
    grid = _grid(rule, d[train], 0.001)
    _, fp = _less_counts(d[train], same[train], grid)
    far_train = fp / float((~same[train]).sum())
    if np.max(far_train) >= far_target:
        return interp1d_slinear(far_train, grid, far_target)
    return 0.0


def _accept_rates(d, same, test, threshold) -> tuple[float, float]:
    """(VAL, FAR) on the test pairs: fraction of same / different pairs with dist < threshold."""
    accept = d[test] < threshold
    s = same[test]
    return float(np.sum(accept & s)) / float(np.sum(s)), float(np.sum(accept & ~s)) / float(
        np.sum(~s)
    )


def _spread(x: np.ndarray, spread: str) -> float:
    if spread == "std":
        return float(np.std(x))
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def _convention(rule: str, folds: int, far_target: float, spread: str) -> dict:
    exact = "midpoints between sorted distinct training distances (plus none/all)"
    return {
        "protocol": "insightface eval/verification.py",
        "distance": "squared L2",
        "predict_same": "dist < threshold",
        "threshold_rule": rule,
        "threshold_grid": "np.arange(0, 4, 0.01)" if rule == "insightface" else exact,
        "val_threshold_grid": "np.arange(0, 4, 0.001)" if rule == "insightface" else exact,
        "folds": folds,
        "fold_split": "contiguous, no shuffle; the first n % folds folds hold one extra pair",
        "tie_break": "first (lowest) threshold with the best training accuracy",
        "far_target": far_target,
        "val_threshold": "interp1d(far_train, thresholds, kind='slinear')(far_target), "
        "scipy<1.9 ties; 0.0 if never reached",
        "spread": SPREADS[spread],
    }


def verify_pairs(
    emb1: np.ndarray,
    emb2: np.ndarray,
    same: np.ndarray,
    folds: int = 10,
    far_target: float = 1e-3,
    threshold_rule: str = "insightface",
    spread: str = "std",
) -> dict:
    """k-fold verification accuracy and VAL@FAR of pairs (emb1[i], emb2[i]) with labels same[i].

    emb1, emb2: [N, d] L2-normalised (flip-fused) embeddings; same: [N] bool or 0/1. threshold_rule:
    "insightface" (published grid, default) or "exact" (every distinct split); spread: "std" (ddof
    0, published) or "sem". Returns accuracy, accuracy_std, fold_accuracies, thresholds (chosen per
    fold), val, val_std, far, tpr/fpr (mean ROC over folds), pairs, convention.
    """
    emb1, emb2 = np.asarray(emb1), np.asarray(emb2)
    if threshold_rule not in THRESHOLD_RULES:
        raise FacelabError(
            f"verify_pairs: threshold_rule must be one of {THRESHOLD_RULES}, got {threshold_rule!r}"
        )
    if spread not in SPREADS:
        raise FacelabError(f"verify_pairs: spread must be one of {tuple(SPREADS)}, got {spread!r}")
    if not 0.0 < far_target <= 1.0:
        raise FacelabError(f"verify_pairs: far_target must be in (0, 1], got {far_target!r}")
    same = _check_inputs(emb1, emb2, same, folds)
    d = pair_distances(emb1, emb2)  # [N] float64
    if threshold_rule == "insightface" and d.max() >= 4.0:
        log.warning(
            "verify_pairs: distances reach %.3f >= 4: are the embeddings L2-normalised?", d.max()
        )
    roc_grid = _grid(threshold_rule, d, 0.01)
    splits = _splits(len(d), folds)
    tprs, fprs = np.zeros((folds, len(roc_grid))), np.zeros((folds, len(roc_grid)))  # [k, T]
    accs, chosen, vals, fars = (np.zeros(folds) for _ in range(4))
    for k, (train, test) in enumerate(splits):
        chosen[k] = _best_threshold(d, same, train, threshold_rule)
        tp, fp = _less_counts(d[test], same[test], roc_grid)
        n_same = int(same[test].sum())
        # every fold holds both kinds (checked)
        tprs[k], fprs[k] = tp / n_same, fp / (len(test) - n_same)
        accs[k] = float(np.sum((d[test] < chosen[k]) == same[test])) / len(test)
        vt = _val_threshold(d, same, train, threshold_rule, far_target)
        vals[k], fars[k] = _accept_rates(d, same, test, vt)
    return {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": _spread(accs, spread),
        "fold_accuracies": accs.tolist(),
        "thresholds": chosen.tolist(),
        "val": float(np.mean(vals)),
        "val_std": _spread(vals, spread),
        "far": float(np.mean(fars)),
        "tpr": np.mean(tprs, 0).tolist(),
        "fpr": np.mean(fprs, 0).tolist(),
        "pairs": int(len(d)),
        "convention": _convention(threshold_rule, folds, far_target, spread),
    }
