"""Claim `adaface_lowres`: z against AdaFace's own forward, the down-sampled mask on known rows; then
the claim end to end in quick mode."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facelab.experiments.claims import adaface_lowres
from facelab.experiments.claims.base import VERDICTS, Context
from facelab.heads import Cosines, build_margin


def test_z_reproduces_adafaces_target_logit():
    """The margin's target logit, rebuilt from adaface_z with g_angle = -m·z, g_add = m + m·z."""
    m, h, eps, mu, sigma = 0.4, 0.333, 1e-3, 12.0, 3.0
    margin = build_margin("adaface", s=1.0, m=m, h=h).double().eval()
    margin.mu, margin.sigma = torch.tensor(mu), torch.tensor(sigma)
    rng = np.random.default_rng(0)
    norms = np.concatenate([rng.uniform(2, 25, 30), [0.0, 200.0]])  # clipped at both ends
    cos = torch.tensor(rng.uniform(-1, 1, (32, 5)))
    labels = torch.tensor(rng.integers(0, 5, 32))
    target_cos = cos[torch.arange(32), labels]
    c = Cosines(cos, labels, target_cos, torch.tensor(norms))
    got = margin(c)[torch.arange(32), labels].numpy()  # [B] target logits (s = 1)
    z = adaface_lowres.adaface_z(norms, mu, sigma, h, eps)
    assert np.all(np.abs(z) <= 1) and z.max() == 1.0  # a = 100 after clipping: z clipped
    bound = 1 - eps
    theta = np.arccos(np.clip(target_cos.numpy(), -bound, bound))
    want = [math.cos(min(max(t - m * zi, eps), math.pi - eps)) - (m + m * zi)
            for t, zi in zip(theta, z, strict=True)]
    assert np.allclose(got, want, atol=1e-9)


def test_low_quality_is_the_down_sampled_photos():
    attrs = {"resolution": np.array([16.0, 60.5, 70.0, 58.0]),
             "face_px": np.array([70.0, 60.5, 70.0, 80.0])}
    assert adaface_lowres.low_quality(attrs).tolist() == [True, False, False, True]


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_measure_quick(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "claims-quality"  # shared with quality_norm's test
    ctx = Context(root=base / "runs", data=base / "data", figures=base / "fig", quick=True,
                  seeds=(0,), overrides=("train.device=cpu", "train.threads=2"))
    result = adaface_lowres.measure(ctx)
    assert result.name == "adaface_lowres" and result.verdict in VERDICTS
    assert result.verdict == "inconclusive"  # one seed
    assert result.paper and result.measurement and result.rule
    assert "synth-lowres (%)" in result.table and "down-sampled" in result.table
    assert (ctx.root / "quality_norm" / "adaface" / "seed0" / "metrics.json").exists()
    assert not (ctx.root / "adaface_lowres").exists()  # no runs of its own
    assert all(Path(png).is_file() for png, _ in result.figures) and len(result.figures) == 1
