import numpy as np
import pytest
from scipy.interpolate import interp1d
from tests.references.verification import verify_pairs_reference

from facelab.errors import FacelabError
from facelab.eval.protocols.verification import (
    fold_bounds,
    interp1d_slinear,
    pair_distances,
    verify_pairs,
)

KEYS = (
    "accuracy",
    "accuracy_std",
    "fold_accuracies",
    "thresholds",
    "val",
    "val_std",
    "far",
    "tpr",
    "fpr",
    "pairs",
)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _random_pairs(n, dim=16, seed=0):
    """Overlapping same/different cosines; float32 unit embeddings."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    e1 = _unit(rng.standard_normal((n, dim)))
    noise = _unit(rng.standard_normal((n, dim)))
    mix = np.where(same, 0.8, 0.1)[:, None] + 0.3 * rng.standard_normal((n, 1))
    e2 = _unit(mix * e1 + noise)
    return e1.astype(np.float32), e2.astype(np.float32), same


def _grid_pairs(n, seed=1):
    """1-d embeddings whose squared distances fall EXACTLY on insightface grid points, repeated."""
    rng = np.random.default_rng(seed)
    grid = np.arange(0, 4, 0.01)
    # (a - 0)^2 reproduces the grid value
    exact = [np.sqrt(g) for g in grid if np.sqrt(g) ** 2 == g]
    pool = np.sort(rng.choice(exact, 24, replace=False))
    a = rng.choice(pool[:16], n)  # same pairs: smaller distances
    b = rng.choice(pool[8:], n)  # different pairs: larger, overlapping
    same = rng.random(n) < 0.5
    e1 = np.where(same, a, b)[:, None]
    return e1, np.zeros_like(e1), same


def _assert_identical(fast, ref):
    for key in KEYS:
        assert fast[key] == ref[key], key


def test_fold_bounds_sizes_and_contiguity():
    assert fold_bounds(23, 10) == [(0, 3), (3, 6), (6, 9), (9, 11), (11, 13), (13, 15), (15, 17),
                                   (17, 19), (19, 21), (21, 23)]  # fmt: skip
    assert fold_bounds(6000, 10)[3] == (1800, 2400)


def test_fold_bounds_match_sklearn_kfold():
    model_selection = pytest.importorskip("sklearn.model_selection")
    for n, k in [(23, 10), (600, 10), (101, 7)]:
        tests = [t for _, t in model_selection.KFold(n_splits=k, shuffle=False).split(np.arange(n))]
        assert [(int(t[0]), int(t[-1]) + 1) for t in tests] == fold_bounds(n, k)


@pytest.mark.parametrize("n", [600, 613])
def test_identical_to_reference_random(n):
    e1, e2, same = _random_pairs(n, seed=n)
    fast, ref = verify_pairs(e1, e2, same), verify_pairs_reference(e1, e2, same)
    _assert_identical(fast, ref)
    assert 0.6 < fast["accuracy"] < 0.99  # overlapping classes: the threshold choice matters


def test_identical_to_reference_with_ties_on_the_grid():
    e1, e2, same = _grid_pairs(407)
    grid = np.arange(0, 4, 0.01)
    assert (
        np.isin(pair_distances(e1, e2), grid).all() and len(np.unique(pair_distances(e1, e2))) <= 24
    )
    _assert_identical(verify_pairs(e1, e2, same), verify_pairs_reference(e1, e2, same))


def _hand_case():
    """20 pairs, 10 folds of (same, different). Same 0.25, different 3.0625; one hard positive
    (2.25) in fold 3, one hard negative (0.0625) in fold 7. All distances exact squares of dyadic
    numbers."""
    dist = np.tile([0.25, 3.0625], 10)
    dist[6], dist[15] = 2.25, 0.0625
    same = np.tile([True, False], 10)
    return np.sqrt(dist)[:, None], np.zeros((20, 1)), same


def test_hand_computed_tiny_case():
    e1, e2, same = _hand_case()
    r = verify_pairs(e1, e2, same)
    # Folds other than 3: train best on (2.25, 3.0625] -> first grid point 2.26 (2.25 itself rejects
    # 2.25, since same means dist < t); fold 3's train has no hard positive -> first point above
    # 0.25.
    grid = np.arange(0, 4, 0.01)
    assert r["thresholds"] == [grid[226]] * 3 + [grid[26]] + [grid[226]] * 6
    assert r["fold_accuracies"] == [1, 1, 1, 0.5, 1, 1, 1, 0.5, 1, 1]
    assert r["accuracy"] == pytest.approx(0.9) and r["accuracy_std"] == pytest.approx(0.2)
    # VAL@1e-3: folds with the hard negative in train interpolate between FAR 0 (t=0.062) and 1/9
    # (t=0.063) -> t ~ 0.062, nothing accepted; fold 7 interpolates between 3.062 and 3.063 ->
    # accepts both.
    assert r["val"] == pytest.approx(0.1) and r["far"] == pytest.approx(0.1)
    assert r["val_std"] == pytest.approx(0.3)
    _assert_identical(r, verify_pairs_reference(e1, e2, same))


def test_perfect_separation():
    rng = np.random.default_rng(3)
    e1 = _unit(rng.standard_normal((200, 8)))
    same = np.arange(200) % 3 == 0
    e2 = np.where(same[:, None], _unit(e1 + 0.05 * rng.standard_normal((200, 8))), -e1)
    r = verify_pairs(e1, e2, same)
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0 and r["fold_accuracies"] == [1.0] * 10
    assert r["pairs"] == 200


def test_val_zero_threshold_branch():
    # Different pairs are antipodal (dist 4): training FAR is 0 on the whole grid < target ->
    # threshold 0.0.
    e1 = np.ones((40, 1))
    same = np.arange(40) % 2 == 0
    e2 = np.where(same[:, None], 0.9, -1.0)
    r = verify_pairs(e1, e2, same)
    assert r["val"] == 0.0 and r["far"] == 0.0 and r["val_std"] == 0.0
    assert r["accuracy"] == 1.0
    _assert_identical(r, verify_pairs_reference(e1, e2, same))


def test_interp1d_slinear_equals_scipy_without_ties():
    rng = np.random.default_rng(0)
    for i in range(200):
        x = np.cumsum(rng.random(rng.integers(2, 30)) + 1e-3)
        y = rng.random(len(x)) * 4
        at = x[i % len(x)] if i % 3 == 0 else rng.uniform(x[0], x[-1])
        ours, theirs = interp1d_slinear(x, y, at), interp1d(x, y, kind="slinear")(at)
        assert ours.shape == theirs.shape == () and ours == theirs


def test_interp1d_slinear_ties_use_last_of_lower_run_and_first_of_upper():
    far = np.array([0, 0, 0, 0.5, 0.5, 1.0])
    thr = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    # between (0, 0.2) and (0.5, 0.3)
    assert interp1d_slinear(far, thr, 0.25) == pytest.approx(0.25)
    # between (0.5, 0.4) and (1, 0.5)
    assert interp1d_slinear(far, thr, 0.75) == pytest.approx(0.45)
    assert interp1d_slinear(far, thr, 0.5) == pytest.approx(0.4)
    for at in np.linspace(0, 0.999, 37):  # numpy's interp resolves ties the same way
        assert interp1d_slinear(far, thr, at) == pytest.approx(np.interp(at, far, thr), abs=1e-12)


def test_exact_rule_picks_first_best_training_cut():
    e1, e2, same = _random_pairs(210, seed=5)
    r = verify_pairs(e1, e2, same, threshold_rule="exact")
    assert r["convention"]["threshold_rule"] == "exact"
    d = pair_distances(e1, e2)
    for k, (a, b) in enumerate(fold_bounds(210, 10)):
        train = np.r_[0:a, b:210]
        dt, st = d[train], same[train]
        accs = [np.mean((dt < t) == st) for t in np.r_[np.sort(dt), np.inf]]  # every cut, by loop
        chosen = r["thresholds"][k]
        assert np.mean((dt < chosen) == st) == max(accs)
        # first best cut
        assert not any(np.mean((dt < t) == st) == max(accs) for t in dt[dt < chosen])
        assert r["fold_accuracies"][k] == np.mean((d[a:b] < chosen) == same[a:b])
    assert r["accuracy"] == pytest.approx(np.mean(r["fold_accuracies"]))


def test_spread_options_and_convention():
    e1, e2, same = _random_pairs(300, seed=2)
    std, sem = verify_pairs(e1, e2, same), verify_pairs(e1, e2, same, spread="sem")
    acc = np.array(std["fold_accuracies"])
    assert std["accuracy_std"] == pytest.approx(np.std(acc))
    assert sem["accuracy_std"] == pytest.approx(np.std(acc, ddof=1) / np.sqrt(10))
    assert sem["accuracy"] == std["accuracy"]
    conv = std["convention"]
    assert conv["threshold_grid"] == "np.arange(0, 4, 0.01)" and conv["folds"] == 10
    assert conv["spread"] == "std (ddof 0)" and conv["threshold_rule"] == "insightface"
    assert len(std["tpr"]) == len(std["fpr"]) == 400 and np.all(np.diff(std["fpr"]) >= 0)


def test_same_accepts_0_1_integers():
    e1, e2, same = _random_pairs(100, seed=4)
    assert (
        verify_pairs(e1, e2, same.astype(int))["accuracy"] == verify_pairs(e1, e2, same)["accuracy"]
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda e1, e2, s: (e1, e2[:, :3], s, {}), "emb1 and emb2"),
        (lambda e1, e2, s: (e1, e2, s[:-1], {}), "one label per pair"),
        (lambda e1, e2, s: (e1, e2, s * 2, {}), "boolean or 0/1"),
        (lambda e1, e2, s: (e1[:5], e2[:5], s[:5], {}), "fewer than folds"),
        (lambda e1, e2, s: (e1, e2, np.sort(s), {}), "has no"),
        (lambda e1, e2, s: (e1 * np.nan, e2, s, {}), "NaN"),
        (lambda e1, e2, s: (e1, e2, s, {"threshold_rule": "youden"}), "threshold_rule"),
        (lambda e1, e2, s: (e1, e2, s, {"spread": "var"}), "spread"),
        (lambda e1, e2, s: (e1, e2, s, {"far_target": 0.0}), "far_target"),
        (lambda e1, e2, s: (e1, e2, s, {"folds": 0}), "folds"),
    ],
)
def test_input_validation(change, match):
    e1, e2, s, kw = change(*_random_pairs(100, seed=6))
    with pytest.raises(FacelabError, match=match):
        verify_pairs(e1, e2, s, **kw)
