"""The claims framework: the decision rule against a hand computation, the photo-wise split, the
report page and its merge of saved results."""

import dataclasses
import math

import numpy as np
import pytest

from facelab.errors import FacelabError
from facelab.experiments.claims import CLAIMS
from facelab.experiments.claims.base import Context, Result, overall, seed_rule, synth_split
from facelab.experiments.claims.report import load_results, save_result, write_claims
from facelab.experiments.claims.run import _finished_runs, _keep_training_time


def test_seed_rule_against_a_hand_computation():
    a, b = [0.90, 0.92, 0.94], [0.80, 0.85, 0.78]
    sd_a = math.sqrt(sum((x - 0.92) ** 2 for x in a) / 2)  # ddof 1
    mb = sum(b) / 3
    sd_b = math.sqrt(sum((x - mb) ** 2 for x in b) / 2)
    pooled = math.sqrt((sd_a**2 + sd_b**2) / 2)
    verdict, text = seed_rule(a, b)
    assert 0.92 - mb > 2 * pooled and verdict == "shown"
    assert f"{2 * pooled:.4g}" in text and "3 seeds" in text
    assert seed_rule(b, a)[0] == "not shown"  # the other direction
    assert seed_rule([0.5, 0.6, 0.7], [0.5, 0.55, 0.65])[0] == "inconclusive"  # within noise
    assert seed_rule([0.9, 0.91], [0.1, 0.11])[0] == "inconclusive"  # two seeds: never shown
    assert seed_rule([0.9], [0.1])[0] == "inconclusive"
    assert seed_rule([0.9, float("nan"), 0.8], [0.1, 0.2, 0.1])[0] == "inconclusive"
    with pytest.raises(FacelabError):
        seed_rule([], [0.1])


def test_overall_verdict():
    assert overall(["shown", "shown"]) == "shown"
    assert overall(["shown", "inconclusive"]) == "inconclusive"
    assert overall(["shown", "not shown", "inconclusive"]) == "not shown"


def test_result_refuses_an_unknown_verdict():
    with pytest.raises(FacelabError, match="verdict"):
        Result("x", "X", "p", "m", "r", "| t |", "proved")


def test_synth_split_holds_out_the_last_photos_of_every_identity(tmp_path):
    ctx = Context(root=tmp_path / "runs", data=tmp_path / "data", figures=tmp_path / "fig",
                  quick=True)
    split = synth_split(ctx, "s", identities=4, images=5, held_out=2, pairs=20)
    rows = [line.split() for line in split.train.read_text().splitlines()]
    assert len(rows) == 4 * 3 and len(split.held_out) == 4 * 2
    trained = {(split.train.parent / r[0]).resolve() for r in rows}
    held = {p.resolve() for p, _ in split.held_out}
    assert not trained & held  # photo-wise: no held-out photo is trained on
    assert {int(r[1]) for r in rows} == {label for _, label in split.held_out} == {0, 1, 2, 3}
    assert all(p.parent.name == f"{label:05d}" for p, label in split.held_out)
    for key in ("yaw_deg", "resolution", "blur"):
        assert split.attributes[key].shape == (8,) and np.isfinite(split.attributes[key]).all()
    assert synth_split(ctx, "s", 4, 5, 2, 20).train == split.train  # reused


def result(name: str, verdict: str, png: str = "", trained: int = 0) -> Result:
    figures = [(png, "a plot")] if png else []
    return Result(name, CLAIMS[name].title, "The paper says.", "We measure.", "The rule.",
                  "| a | b |\n| --- | --- |\n| 1 | 2 |", verdict, figures, "A note.", 90.0,
                  trained)


def test_report_merges_saved_results_in_registry_order(tmp_path):
    first, second = list(CLAIMS)[:2]
    png = tmp_path / "docs" / "claims" / "x.png"
    save_result(tmp_path / "runs", result(second, "not shown", str(png)))
    save_result(tmp_path / "runs", result(first, "shown", trained=4))
    results = load_results(tmp_path / "runs", list(CLAIMS))
    assert set(results) == {first, second} and results[second].figures == [(str(png), "a plot")]
    doc = tmp_path / "docs" / "claims.md"
    write_claims(doc, results, list(CLAIMS), "Header.")
    text = doc.read_text()
    assert text.index(CLAIMS[first].title) < text.index(CLAIMS[second].title)
    assert "| shown |" in text and "**Verdict: not shown.**" in text
    assert "![a plot](claims/x.png)" in text
    assert "1.5 min for the call that trained its 4 runs" in text  # first
    assert "1.5 min to measure it from runs trained before it" in text  # second: trained none
    assert "Not measured yet:" in text and list(CLAIMS)[2] in text


def test_a_corrupt_result_is_named(tmp_path):
    name = list(CLAIMS)[0]
    (tmp_path / name).mkdir()
    (tmp_path / name / "result.json").write_text("{")
    with pytest.raises(FacelabError, match="result.json"):
        load_results(tmp_path, [name])


def test_a_re_measure_keeps_the_training_calls_wall_time(tmp_path):
    name = list(CLAIMS)[0]
    trained = result(name, "shown", trained=6)
    again = dataclasses.replace(trained, seconds=2.0, trained=0)
    _keep_training_time(again, trained)
    assert (again.seconds, again.trained) == (90.0, 6)
    retrained = dataclasses.replace(trained, seconds=30.0, trained=2)
    _keep_training_time(retrained, trained)  # trained anew: its own time counts
    assert (retrained.seconds, retrained.trained) == (30.0, 2)
    first = dataclasses.replace(trained, seconds=2.0, trained=0)
    _keep_training_time(first, None)
    assert (first.seconds, first.trained) == (2.0, 0)


def test_finished_runs_are_folders_with_metrics(tmp_path):
    (tmp_path / "a" / "seed0").mkdir(parents=True)
    (tmp_path / "a" / "seed0" / "metrics.json").write_text("{}")
    (tmp_path / "a" / "seed1").mkdir()
    (tmp_path / "a" / "seed1" / "checkpoint.pt").write_text("")
    assert _finished_runs(tmp_path) == {tmp_path / "a" / "seed0"}
    assert _finished_runs(tmp_path / "missing") == set()
