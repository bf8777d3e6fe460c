"""Claim `dail`: the centre cosines, the cross-dataset pairs and their AUC, the dataset classifier,
each against an independent computation; then the claim end to end in quick mode."""

from pathlib import Path

import numpy as np
import pytest

from facelab.experiments.claims import dail
from facelab.experiments.claims.base import VERDICTS, Context


def test_centre_and_other_cosines_against_a_loop():
    rng = np.random.default_rng(0)
    n, d = 5, 7
    weight = rng.normal(size=(2 * n, d))  # A's 5 classes, then the partner's
    shared = np.array([[0, 3], [2, 0], [4, 4]])  # (class in A, class in partner)
    got = dail.centre_cosines(weight, shared, n)
    want, other = [], []
    for a in range(n):
        for b in range(n):
            u, v = weight[a], weight[n + b]
            cos = float(u @ v / np.sqrt((u @ u) * (v @ v)))
            if [a, b] not in shared.tolist():
                other.append(cos)
    for a, b in shared:
        u, v = weight[a], weight[n + b]
        want.append(float(u @ v / np.sqrt((u @ u) * (v @ v))))
    assert np.allclose(got, want, atol=1e-12)
    assert np.allclose(np.sort(dail.other_cosines(weight, shared, n)), np.sort(other), atol=1e-12)


def test_identical_centres_give_cosine_one():
    weight = np.tile(np.eye(3), (2, 1))  # partner class c == A class c
    assert np.allclose(dail.centre_cosines(weight, np.array([[0, 0], [2, 2]]), 3), 1.0)
    assert np.allclose(dail.centre_cosines(weight, np.array([[0, 1]]), 3), 0.0)


def test_cross_pairs_against_a_loop():
    labels_a = np.array([0, 0, 1, 1, 2, 2])  # A class 2 is not shared
    labels_b = np.array([5, 5, 3, 3, 1])  # partner 5 = A 0, partner 3 = A 1, partner 1 new
    shared = np.array([[0, 5], [1, 3]])
    i, j, same = dail.cross_pairs(labels_a, labels_b, shared)
    person_a, person_b = {0: "p", 1: "q"}, {5: "p", 3: "q"}
    want = {(x, y, person_a[labels_a[x]] == person_b[labels_b[y]])
            for x in range(len(labels_a)) for y in range(len(labels_b))
            if labels_a[x] in person_a and labels_b[y] in person_b}
    got = set(zip(i.tolist(), j.tolist(), same.tolist(), strict=True))
    assert got == want and len(i) == len(want) == 16 and same.sum() == 8


def test_cross_auc_is_the_mann_whitney_fraction():
    rng = np.random.default_rng(1)
    labels_a, labels_b = np.repeat([0, 1, 2], 2), np.repeat([2, 0, 1], 2)
    shared = np.array([[0, 1], [1, 2], [2, 0]])
    emb_a = rng.normal(size=(6, 4))
    emb_b = rng.normal(size=(6, 4))
    emb_a /= np.linalg.norm(emb_a, axis=1, keepdims=True)
    emb_b /= np.linalg.norm(emb_b, axis=1, keepdims=True)
    i, j, same = dail.cross_pairs(labels_a, labels_b, shared)
    scores = [float(emb_a[x] @ emb_b[y]) for x, y in zip(i, j, strict=True)]
    pos = [s for s, t in zip(scores, same, strict=True) if t]
    neg = [s for s, t in zip(scores, same, strict=True) if not t]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    auc = dail.cross_auc(emb_a, labels_a, emb_b, labels_b, shared)
    assert abs(auc - wins / (len(pos) * len(neg))) < 1e-12


def test_dataset_accuracy_separable_and_not():
    rng = np.random.default_rng(2)
    dataset = np.repeat([0, 1], 60)
    apart = rng.normal(size=(120, 8)) + 6.0 * dataset[:, None]  # two far clusters
    assert dail.dataset_accuracy(apart, dataset) == 1.0
    alike = rng.normal(size=(120, 8))  # one distribution: chance
    assert dail.dataset_accuracy(alike, dataset) < 0.7


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_measure_quick(tmp_path: Path):
    ctx = Context(root=tmp_path / "runs", data=tmp_path / "data", figures=tmp_path / "fig",
                  quick=True, seeds=(0,), overrides=("train.device=cpu", "train.threads=1"))
    result = dail.measure(ctx)
    assert result.name == "dail" and result.verdict in VERDICTS
    assert result.verdict == "inconclusive"  # one seed
    for text in (result.paper, result.measurement, result.rule, result.table):
        assert text.strip()
    assert "| A + B (shifted) | 60% | grl |" in result.table
    assert "| A + C (same) | 60% | aware |" in result.table
    assert result.figures and all(Path(png).is_file() for png, _ in result.figures)
    assert (ctx.root / "dail" / "shifted60-naive" / "seed0" / "metrics.json").is_file()


def test_plan_covers_every_overlap_and_seed(tmp_path: Path):
    ctx = Context(root=tmp_path, data=tmp_path, figures=tmp_path, seeds=(0, 1, 2))
    cells = dail.plan(ctx)
    assert set(cells) == {(d, o) for d in ("shifted", "same") for o in (0.0, 0.3, 0.6)}
    for cell, (variants, seeds) in cells.items():
        assert seeds == (0, 1, 2)
        assert variants == (tuple(dail.VARIANTS) if cell == dail.FULL_CELL
                            else ("naive", "aware"))


def test_zero_overlap_rows_show_only_the_dataset_classifier():
    nan = float("nan")
    runs = [{"centre": nan, "centre_other": nan, "auc": nan, "dataset_acc": a}
            for a in (0.6, 0.7, 0.8)]
    shared = [{"centre": c, "centre_other": 0.0, "auc": 0.9, "dataset_acc": 0.5}
              for c in (0.1, 0.2, 0.3)]
    results = {("shifted", 0.0, "naive"): runs, ("shifted", 0.0, "aware"): runs,
               ("shifted", 0.6, "naive"): shared, ("shifted", 0.6, "aware"): shared,
               ("shifted", 0.6, "crossing"): shared, ("shifted", 0.6, "grl"): shared}
    rows = dail.table(results).splitlines()
    zero = next(r for r in rows if "| 0% | naive |" in r)
    assert zero.count("—") == 3 and "0.700 ± 0.100" in zero
    _, lines = dail.decide(results)
    assert not any(", 0%)" in line for line in lines)  # (b): undefined without shared persons
    assert any("(b)" in line and "60%" in line for line in lines)
