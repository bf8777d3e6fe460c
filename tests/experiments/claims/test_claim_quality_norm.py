"""Claim `quality_norm`: the signed rank correlation against a loop, the ERC drop and the NaN-safe
rule on known values; then the claim end to end in quick mode."""

from pathlib import Path

import numpy as np
import pytest

from facelab.experiments.claims import quality_norm
from facelab.experiments.claims.base import VERDICTS, Context, train_minutes


def _loop_ranks(v: np.ndarray) -> list[float]:
    """1-based ranks, ties sharing the average of their positions."""
    out = []
    for x in v:
        below = sum(1 for y in v if y < x)
        equal = sum(1 for y in v if y == x)
        out.append(below + (equal + 1) / 2)
    return out


def _loop_spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _loop_ranks(a), _loop_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den


def test_signed_spearman_against_a_loop():
    rng = np.random.default_rng(0)
    norms = rng.normal(10, 2, 40)
    blur = np.where(rng.random(40) < 0.6, 0.0, rng.uniform(0.6, 2.2, 40)).round(1)  # many ties
    want = _loop_spearman(norms, blur)
    assert quality_norm.signed_spearman(norms, blur, 1.0) == pytest.approx(want, abs=1e-12)
    assert quality_norm.signed_spearman(norms, blur, -1.0) == pytest.approx(-want, abs=1e-12)
    # a norm that falls exactly with blur is a perfect quality score: +1 once signed
    assert quality_norm.signed_spearman(-np.arange(5.0), np.arange(5.0), -1.0) == pytest.approx(1)
    assert np.isnan(quality_norm.signed_spearman(norms, np.zeros(40), 1.0))


def test_factor_values_sign_and_abs_yaw():
    attrs = {"yaw_deg": np.array([-30.0, 10.0]), "resolution": np.array([20.0, 60.0]),
             "blur": np.array([0.0, 1.5])}
    assert quality_norm.factor_values(attrs, "|yaw|").tolist() == [30.0, 10.0]
    assert quality_norm.factor_values(attrs, "resolution").tolist() == [20.0, 60.0]
    assert {f: s for f, (_, s) in quality_norm.FACTORS.items()} == {
        "resolution": 1.0, "blur": -1.0, "|yaw|": -1.0}


def test_relative_drop():
    fr = quality_norm.REJECT
    fnmr = [0.4 - 0.02 * i for i in range(len(fr))]  # 0.3 is the 7th fraction: FNMR 0.28
    assert quality_norm.relative_drop(fnmr, fr) == pytest.approx(1 - 0.28 / 0.4)
    assert quality_norm.relative_drop([0.0] * len(fr), fr) == 0.0


def quick_context(base: Path) -> Context:
    """One quick root for quality_norm and adaface_lowres (whichever test runs second reuses the
    first one's runs, as the claims do)."""
    return Context(root=base / "runs", data=base / "data", figures=base / "fig", quick=True,
                   seeds=(0,), overrides=("train.device=cpu", "train.threads=2"))


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_measure_quick(tmp_path_factory):
    ctx = quick_context(tmp_path_factory.getbasetemp() / "claims-quality")
    result = quality_norm.measure(ctx)
    assert result.name == "quality_norm" and result.verdict in VERDICTS
    assert result.verdict == "inconclusive"  # one seed
    assert result.paper and result.measurement and result.rule and "ρ(norm, blur)" in result.table
    assert "ρ(norm, \\|yaw\\|)" in result.table  # pipes escaped in the markdown table
    for head in quality_norm.HEADS:
        assert f"`{head}`" in result.table
        assert (ctx.root / "quality_norm" / head / "seed0" / "metrics.json").exists()
    assert len(result.figures) == 2
    assert all(Path(png).is_file() and Path(png).stat().st_size > 0 for png, _ in result.figures)


def test_train_minutes_from_metrics_and_config(tmp_path):
    for k, (steps, batch, speed) in enumerate([(200, 64, 128.0), (100, 32, 40.0)]):
        run = tmp_path / f"run{k}"
        run.mkdir()
        (run / "metrics.json").write_text(
            f'{{"train": {{"steps": {steps}, "images_per_second": {speed}}}}}')
        (run / "config.yaml").write_text(f"data:\n  batch_size: {batch}\n")
    want = (200 * 64 / 128.0 + 100 * 32 / 40.0) / 60
    assert train_minutes([tmp_path / "run0", tmp_path / "run1"]) == pytest.approx(want)
