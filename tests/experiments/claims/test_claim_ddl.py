"""Claim `ddl`: the easy/hard split against distill's, the pair grouping against a loop, the
histogram KL against scipy; then the claim end to end in quick mode."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import entropy

from facelab.config import DistillConfig
from facelab.distill.sampling import attribute_split
from facelab.experiments.claims import ddl
from facelab.experiments.claims.base import VERDICTS, Context


def test_easy_hard_is_distills_attribute_split(tmp_path):
    yaw = np.array([-50.0, -30.0, -29.9, 0.0, 12.0, 29.9, 30.0, 45.0, 5.0, 5.0, 5.0])
    res = np.array([60.0, 60.0, 60.0, 39.9, 40.0, 80.0, 20.0, 50.0, 41.0, 40.0, 10.0])
    names = [f"{k:05d}/00.jpg" for k in range(len(yaw))]
    rows = ["image,yaw_deg,resolution"] + [f"{n},{y},{r}" for n, y, r in zip(names, yaw, res,
                                                                              strict=True)]
    (tmp_path / "attr.csv").write_text("\n".join(rows) + "\n")
    dataset = SimpleNamespace(root=tmp_path, samples=[(tmp_path / n, 0) for n in names])
    for cfg in (DistillConfig(), DistillConfig(easy_max_yaw=12.0, hard_min_yaw=12.0),
                DistillConfig(hard_min_yaw=45.0, hard_max_resolution=30.0)):
        want_easy, want_hard = attribute_split(dataset, tmp_path / "attr.csv", cfg)
        easy, hard = ddl.easy_hard({"yaw_deg": yaw, "resolution": res}, cfg)
        assert easy.tolist() == want_easy.tolist() and hard.tolist() == want_hard.tolist()


def test_pair_cosines_against_a_loop(monkeypatch):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(9, 5))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    easy = np.array([1, 1, 0, 1, 0, 0, 1, 1, 0], bool)
    hard = np.array([0, 0, 1, 0, 1, 0, 0, 0, 1], bool)  # photo 5: neither (left out)
    want = {"easy_pos": [], "easy_neg": [], "hard_pos": [], "hard_neg": []}
    for i in range(9):
        for j in range(i + 1, 9):
            kind = "pos" if labels[i] == labels[j] else "neg"
            cos = float(emb[i] @ emb[j])
            if easy[i] and easy[j]:
                want[f"easy_{kind}"].append(cos)
            elif (hard[i] and (easy[j] or hard[j])) or (hard[j] and (easy[i] or hard[i])):
                want[f"hard_{kind}"].append(cos)
    got = ddl.pair_cosines(emb, labels, easy, hard)
    for key, values in want.items():
        assert np.allclose(np.sort(got[key]), np.sort(values), atol=1e-12), key
    monkeypatch.setattr(ddl, "MAX_NEGATIVES", 5)  # a fixed subset of the negatives
    few = ddl.pair_cosines(emb, labels, easy, hard)
    assert len(few["hard_neg"]) == 5 and set(few["hard_neg"].round(12)) <= set(
        np.round(want["hard_neg"], 12))
    assert np.array_equal(few["hard_neg"], ddl.pair_cosines(emb, labels, easy, hard)["hard_neg"])


def test_histogram_kl_against_scipy():
    cfg = DistillConfig()  # 1000 bins on [0, 1), sigma 0.1, left nodes
    rng = np.random.default_rng(1)
    teacher, student = rng.uniform(0.5, 0.9, 40), rng.uniform(0.1, 0.6, 30)
    nodes = np.arange(cfg.bins) / cfg.bins

    def hist(s):
        h = np.exp(-((s[:, None] - nodes[None, :]) ** 2) / (2 * cfg.sigma**2)).sum(0)
        return h / h.sum()

    p, q = hist(teacher), hist(student)
    got = ddl.histogram_kl(teacher, student, cfg)
    # kl_form "floor": Σ p (log(p + 1e-10) − log(q + 1e-10)), numpy float64
    assert abs(got - float(np.sum(p * (np.log(p + 1e-10) - np.log(q + 1e-10))))) < 1e-10
    # the exact KL (scipy) up to that floor: q's far tail (~4e-8 here) is within 1e-4 of it
    assert abs(got - entropy(p, q)) < 1e-4 * entropy(p, q)
    assert abs(ddl.histogram_kl(teacher, teacher, cfg)) < 1e-12


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_measure_quick(tmp_path: Path):
    ctx = Context(root=tmp_path / "runs", data=tmp_path / "data", figures=tmp_path / "fig",
                  quick=True, seeds=(0,), overrides=("train.device=cpu", "train.threads=1"))
    result = ddl.measure(ctx)
    assert result.name == "ddl" and result.verdict in VERDICTS
    assert result.verdict == "inconclusive"  # one seed
    for text in (result.paper, result.measurement, result.rule, result.table):
        assert text.strip()
    assert "KL(P+ easy ‖ P+ hard)" in result.table and "`arcface+ddl`" in result.table
    assert result.figures and all(Path(png).is_file() for png, _ in result.figures)
    for variant in ddl.VARIANTS:
        assert (ctx.root / "ddl" / variant / "seed0" / "metrics.json").is_file()


def test_margin_gap_on_a_known_configuration():
    sims = {"easy_pos": np.array([0.8, 0.6]), "easy_neg": np.array([0.1, 0.1]),
            "hard_pos": np.array([0.5]), "hard_neg": np.array([0.2, 0.4])}
    assert abs(ddl.margin_gap(sims) - ((0.7 - 0.1) - (0.5 - 0.3))) < 1e-12
