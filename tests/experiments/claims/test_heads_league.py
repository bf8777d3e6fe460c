"""Claim `heads_league`: the two-sided comparison with the reference and the ordering decision;
then the claim end to end in quick mode (reusing margins_separate's runs)."""

import pytest

from facelab.experiments.claims import heads_league as hl
from facelab.experiments.claims import margins_separate as ms
from facelab.experiments.claims.base import VERDICTS, Context
from facelab.experiments.common import SETS


def test_compare_is_two_sided():
    ref = [0.80, 0.81, 0.79]
    assert hl.compare([0.90, 0.91, 0.89], ref)[0] == "better"
    assert hl.compare([0.70, 0.71, 0.69], ref)[0] == "worse"
    assert hl.compare([0.80, 0.85, 0.78], ref)[0] == "within noise"
    assert hl.compare([0.9], [0.8])[0] == "within noise"  # one seed decides nothing
    assert "Δ = +0.1" in hl.compare([0.90, 0.91, 0.89], ref)[1]


def test_decide_tests_every_margin_head_against_both_baselines():
    def acc(lfw):
        return {s: lfw for s in SETS}

    table = {"softmax": acc([0.70, 0.71, 0.72]), "normface": acc([0.72, 0.73, 0.74]),
             "adacos": acc([0.50, 0.50, 0.50]),  # no margin: not in the claim
             "arcface": acc([0.90, 0.91, 0.92]), "cosface": acc([0.88, 0.89, 0.90])}
    verdict, lines = hl.decide(table)
    assert verdict == "shown" and lines == [
        "- 4 of 4 comparisons (margin head > softmax / normface on synth-lfw) shown."]
    table["cosface"] = acc([0.73, 0.80, 0.70])
    verdict, lines = hl.decide(table)
    assert verdict == "inconclusive" and len(lines) == 3 and "`cosface` > `softmax`" in lines[1]


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_quick_measure_reuses_margins_separate_runs(tmp_path_factory):
    # the session-wide folder of test_margins_separate's quick test: its runs are reused when it
    # ran first, trained here otherwise
    root = tmp_path_factory.getbasetemp() / "claims-league-quick"
    ctx = Context(root=root / "runs", data=root / "data", figures=root / "fig",
                  quick=True, seeds=(0,), overrides=("train.threads=2",))
    result = hl.measure(ctx)
    assert result.name == "heads_league" and result.verdict in VERDICTS
    assert result.verdict == "inconclusive" and all([result.paper, result.measurement,
                                                     result.rule])
    rows = [r for r in result.table.splitlines() if r.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == [h for h in hl.recipes() if h in hl.QUICK_HEADS]
    shared = [h for h in hl.QUICK_HEADS if h in ms.HEADS]
    for head in hl.QUICK_HEADS:
        folder = ms.NAME if head in shared else hl.NAME
        assert (root / "runs" / folder / head / "seed0" / "metrics.json").exists()
