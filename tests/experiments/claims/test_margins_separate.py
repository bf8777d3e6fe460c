"""Claim `margins_separate`: intra/inter angles on a known configuration and against a loop, the
convergence check, the decision; then the claim end to end in quick mode."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from facelab.experiments.claims import margins_separate as ms
from facelab.experiments.claims.base import VERDICTS, Context


def test_separation_of_a_known_configuration():
    # class directions e1, (cos 30°, sin 30°, 0), e3; each class: u·cos α ± v·sin α, v ⟂ u,
    # so every feature is α from its class's direction
    alpha = math.radians(4.0)
    u = np.array([[1, 0, 0], [math.cos(math.radians(30)), math.sin(math.radians(30)), 0],
                  [0, 0, 1]], float)
    v = np.array([[0, 0, 1], [0, 0, 1], [1, 0, 0]], float)
    feats = np.concatenate([np.stack([u[c] * math.cos(alpha) + s * v[c] * math.sin(alpha)
                                      for s in (1, -1, 1, -1)]) for c in range(3)])
    labels = np.repeat([0, 1, 2], 4)
    got = ms.separation(feats, labels)
    assert math.isclose(got["intra"], alpha, abs_tol=1e-9)
    inter = math.radians((30 + 30 + 90) / 3)  # nearest other class: 30°, 30°, 90°
    assert math.isclose(got["inter"], inter, abs_tol=1e-9)
    assert math.isclose(got["ratio"], inter / alpha, rel_tol=1e-9)


def test_separation_against_a_loop():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 6)) + np.repeat(rng.normal(size=(4, 6)) * 2, 10, axis=0)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 10)
    means = []
    for c in range(4):
        m = feats[labels == c].sum(axis=0)
        means.append(m / math.sqrt(float(m @ m)))
    intra = [math.acos(min(1.0, float(f @ means[c]))) for f, c in zip(feats, labels, strict=True)]
    nearest = [min(math.acos(min(1.0, float(means[a] @ means[b]))) for b in range(4) if b != a)
               for a in range(4)]
    got = ms.separation(feats, labels)
    assert math.isclose(got["intra"], sum(intra) / 40, abs_tol=1e-9)
    assert math.isclose(got["inter"], sum(nearest) / 4, abs_tol=1e-9)


def test_last_change_and_the_loss_log(tmp_path):
    steps = np.arange(5, 101, 5)  # 20 rows: tenths of 2 rows each
    loss = np.full(20, 1.0)
    loss[:2] = [9.0, 7.0]  # first tenth: mean 8
    loss[16:18] = [1.2, 1.0]  # steps 85, 90: the tenth before the last, mean 1.1
    loss[18:] = [1.0, 1.0]  # last tenth, mean 1.0
    assert math.isclose(ms.last_change(steps, loss), 0.1 / 7.0, rel_tol=1e-12)
    assert ms.last_change(np.array([1, 2, 3]), np.array([3.0, 2.0, 1.0])) == math.inf
    rows = [{"step": int(s), "loss/loss": float(v), "lr": 0.1} for s, v in zip(steps, loss,
                                                                             strict=True)]
    rows.append({"step": 100, "val/synth-lfw/accuracy": 0.9})  # not a loss row
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s, v = ms.loss_curve(tmp_path)
    assert s.tolist() == steps.tolist() and np.allclose(v, loss)


def test_decide_needs_every_margin_head_and_convergence():
    def stats(intra, ratio, change=0.01):
        return {"intra": intra, "ratio": ratio, "change": [change] * 3}

    base = {"softmax": stats([0.5, 0.52, 0.51], [1.0, 1.1, 1.05]),
            "normface": stats([0.3, 0.31, 0.32], [2.0, 2.1, 2.05])}
    good = {h: stats([0.2, 0.21, 0.2], [3.0, 3.1, 3.05]) for h in ms.MARGIN_HEADS}
    assert ms.decide({**base, **good})[0] == "shown"
    assert ms.decide({**base, **good, "cosface": stats([0.4, 0.41, 0.4], [3.0, 3.1, 3.05])}
                     )[0] == "not shown"
    moving = {**base, **good, "arcface": stats([0.2, 0.21, 0.2], [3.0, 3.1, 3.05], 0.2)}
    verdict, lines = ms.decide(moving)
    assert verdict == "inconclusive" and "arcface" in lines[-1]


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_quick_measure_writes_a_result_and_the_loss_plot(tmp_path_factory):
    # a session-wide folder: test_heads_league's quick test reuses these runs (as the bench does)
    root = tmp_path_factory.getbasetemp() / "claims-league-quick"
    ctx = Context(root=root / "runs", data=root / "data", figures=root / "fig",
                  quick=True, seeds=(0,), overrides=("train.threads=2",))
    result = ms.measure(ctx)
    assert result.name == "margins_separate" and result.verdict == "inconclusive"
    assert result.verdict in VERDICTS and all([result.paper, result.measurement, result.rule])
    for head in ms.QUICK_HEADS:
        assert f"`{head}`" in result.table
    assert len(result.figures) == 1 and Path(result.figures[0][0]).stat().st_size > 0
