"""Claim `hard_negatives`: the hard-negative mask, share and logit shift against a loop and against
the CurricularFace and MV-Arc margins' own forward; the stage steps; then the claim end to end in
quick mode (staged checkpoints at the right steps)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facelab.experiments.claims import hard_negatives
from facelab.experiments.claims.base import VERDICTS, Context
from facelab.heads import Cosines, build_margin
from facelab.model import load_checkpoint


def _loop(x, w, labels, m, kind, t):
    """hard_stats by a loop over samples and classes, from the angles."""
    hard_cos, pairs = [], 0
    for i in range(len(x)):
        xi = x[i] / math.sqrt(sum(v * v for v in x[i]))
        cos = [float(xi @ (wj / math.sqrt(sum(v * v for v in wj)))) for wj in w]
        theta_y = math.acos(min(1.0, max(-1.0, cos[labels[i]])))
        for j, c in enumerate(cos):
            if j != labels[i]:
                pairs += 1
                if c > math.cos(theta_y + m):
                    hard_cos.append(c)
    shift = [c * (t + c - 1) if kind == "curricularface" else t * (c + 1) for c in hard_cos]
    return len(hard_cos) / pairs, sum(t + c for c in hard_cos) / len(hard_cos), \
        sum(shift) / len(shift)


@pytest.mark.parametrize("kind", ["curricularface", "mv_arc"])
def test_hard_stats_against_a_loop_and_the_margin(kind):
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(24, 6)), rng.normal(size=(7, 6))
    labels = rng.integers(0, 7, 24)
    w[labels[:12]] += 2 * x[:12]  # half the samples near their centre: a mix of hard and easy
    m, t = 0.5, 0.3
    got = hard_negatives.hard_stats(x, w, labels, m, kind, t)
    fraction, coef, shift = _loop(x, w, labels, m, kind, t)
    assert got["fraction"] == pytest.approx(fraction) and 0 < fraction < 1
    assert got["shift"] == pytest.approx(shift, abs=1e-12)
    if kind == "curricularface":
        assert got["coef"] == pytest.approx(coef, abs=1e-12)
    # the margin's own logits (s = 1): modulated entries = hard negatives, by the same shift
    margin = build_margin(kind, s=1.0, m=m, **({"t": t} if kind == "mv_arc" else {}))
    margin = margin.double().eval()
    if kind == "curricularface":
        margin.t = torch.tensor(t, dtype=torch.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = torch.tensor(np.clip(xn @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T, -1, 1))
    lab = torch.tensor(labels)
    c = Cosines(cos, lab, cos[torch.arange(24), lab], torch.ones(24, dtype=torch.float64))
    diff = (margin(c) - cos).numpy()  # [B, C]
    diff[np.arange(24), labels] = 0.0
    changed = diff != 0
    assert changed.sum() / (24 * 6) == pytest.approx(fraction)
    assert diff[changed].mean() == pytest.approx(shift, abs=1e-12)


def test_stage_steps():
    assert hard_negatives.stage_steps(200) == [20, 50, 100, 150, 200]
    assert hard_negatives.stage_steps(3) == [1, 2, 3]
    assert hard_negatives.stage_steps(1) == [1]


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_measure_quick(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "claims-quality"  # the quality_norm tests' data
    ctx = Context(root=base / "runs", data=base / "data", figures=base / "fig", quick=True,
                  seeds=(0,), overrides=("train.device=cpu", "train.threads=2"))
    result = hard_negatives.measure(ctx)
    assert result.name == "hard_negatives" and result.verdict in VERDICTS
    assert result.verdict == "inconclusive"  # one seed
    assert result.paper and result.measurement and result.rule and "hard fraction" in result.table
    run = ctx.root / "hard_negatives" / "curricularface" / "seed0"
    # quick: stops at 10 % (step 1) and at the end
    assert load_checkpoint(run / "stage-step1.pt")["step"] == 1
    assert load_checkpoint(run)["step"] == 3 and not (run / "stage-step2.pt").exists()
    assert all(Path(png).is_file() for png, _ in result.figures) and len(result.figures) == 1
    # a finished run with its stage copies is reused as it is (nothing read from the recipe)
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    files = hard_negatives.train_staged(Path("unused.yaml"), [], run, [1, 3])
    assert files == [run / "stage-step1.pt", run / "checkpoint.pt"]
    assert (run / "checkpoint.pt").stat().st_mtime_ns == stamp
