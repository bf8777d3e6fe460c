"""Deployment thresholds (best accuracy, best F1) against a brute-force sweep."""

import numpy as np
import pytest

from facelab.eval.protocols.thresholds import select_thresholds


def _brute(d, same):
    """Every candidate threshold t in sorted(d) ∪ {max + 1}, predictions d < t, counted in a loop;
    the first best by accuracy and by F1, returned as (accuracy, F1, a threshold interval for
    each)."""
    cands = sorted(set(d.tolist())) + [d.max() + 1.0]
    best_acc, best_f1 = (-1.0, None), (-1.0, None)
    for lo, t in zip(
        [-np.inf, *cands[:-1]], cands, strict=True
    ):  # predictions are constant on (lo, t]
        tp = fp = fn = tn = 0
        for di, si in zip(d, same, strict=True):
            pred = di < t
            tp += pred and si
            fp += pred and not si
            fn += (not pred) and si
            tn += (not pred) and not si
        acc = (tp + tn) / len(d)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        if acc > best_acc[0]:
            best_acc = (acc, (lo, t))
        if f1 > best_f1[0]:
            best_f1 = (f1, (lo, t))
    return best_acc, best_f1


@pytest.mark.parametrize("seed", range(6))
def test_thresholds_match_a_brute_force_sweep(seed):
    rng = np.random.default_rng(seed)
    n = 40
    same = rng.random(n) < (0.2 if seed % 2 else 0.6)  # unbalanced sets: accuracy and F1 disagree
    d = np.where(same, rng.normal(0.8, 0.35, n), rng.normal(1.4, 0.35, n)).round(2)  # ties included
    got = select_thresholds(d, same)
    (acc, (alo, ahi)), (f1, (flo, fhi)) = _brute(d, same)
    assert got["accuracy"]["accuracy"] == pytest.approx(acc)
    assert got["f1"]["f1"] == pytest.approx(f1)
    assert alo < got["accuracy"]["threshold"] <= ahi  # the same split of the sorted distances
    assert flo < got["f1"]["threshold"] <= fhi
    pred = d < got["f1"]["threshold"]  # the stored threshold reproduces the stored score
    assert 2 * (pred & same).sum() / (pred.sum() + same.sum()) == pytest.approx(f1)


def test_separable_pairs_get_a_threshold_between_the_classes():
    d = np.array([0.1, 0.2, 0.3, 1.0, 1.5])
    got = select_thresholds(d, np.array([True, True, True, False, False]))
    assert got["accuracy"] == {"threshold": pytest.approx(0.65), "accuracy": 1.0}
    assert got["f1"] == {"threshold": pytest.approx(0.65), "f1": 1.0}
