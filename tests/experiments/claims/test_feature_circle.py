"""Claim `feature_circle`: the circle gap on configurations with a known answer and against a loop;
then the claim end to end in quick mode."""

import math
from pathlib import Path

import numpy as np
import pytest

from facelab.experiments.claims import feature_circle as fc
from facelab.experiments.claims.base import VERDICTS, Context


def _class_features(centre: float, half_width: float, n: int) -> np.ndarray:
    """n unit 2-D features at centre ± half_width (radians), half on each side: their mean
    direction is `centre` and every angle to it is `half_width`."""
    side = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    phi = centre + side * half_width
    return np.stack([np.cos(phi), np.sin(phi)], axis=1)


def test_equally_spaced_classes_have_the_textbook_gap():
    # 8 classes every 45°, each ±10°: every free arc is 45 - 2·10 = 25°
    feats = np.concatenate([_class_features(math.radians(45 * k + 7), math.radians(10), 20)
                            for k in range(8)])
    labels = np.repeat(np.arange(8), 20)
    got = fc.circle_gap(feats, labels)
    assert math.isclose(math.degrees(got["gap"]), 25.0, abs_tol=1e-6)
    assert math.isclose(math.degrees(got["mean_free"]), 25.0, abs_tol=1e-6)
    assert math.isclose(math.degrees(got["min_arc"]), 45.0, abs_tol=1e-6)
    assert math.isclose(math.degrees(got["radius"]), 10.0, abs_tol=1e-6)


def test_uneven_classes_against_a_loop_over_neighbours():
    # uneven centres, one pair across ±180° (the wrap-around arc), labels not in angular order
    centres = [170.0, -175.0, 10.0, 40.0, 100.0, -90.0, -60.0, 250.0 - 360.0]
    widths = [3.0, 4.0, 5.0, 2.0, 8.0, 6.0, 1.0, 7.0]
    labels_of = [5, 2, 7, 0, 3, 6, 1, 4]  # class id of each centre
    feats = np.concatenate([_class_features(math.radians(c), math.radians(w), 10)
                            for c, w in zip(centres, widths, strict=True)])
    labels = np.repeat(labels_of, 10)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    got = fc.circle_gap(feats[order], labels[order])
    # the loop: every centre's nearest neighbour counter-clockwise, free arc = arc - both widths
    free = []
    for c, w in zip(centres, widths, strict=True):
        ccw = [((d - c) % 360.0, dw) for d, dw in zip(centres, widths, strict=True) if d != c]
        arc, w_next = min(ccw)
        free.append(arc - w - w_next)
    assert math.isclose(math.degrees(got["gap"]), min(free), abs_tol=1e-6)
    assert math.isclose(math.degrees(got["mean_free"]), sum(free) / 8, abs_tol=1e-6)
    assert math.isclose(math.degrees(got["radius"]), sum(widths) / 8, abs_tol=1e-6)


def test_radius_is_the_95th_percentile_and_angles_match_a_loop():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(60, 5))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = rng.integers(0, 3, 60)
    classes, dirs = fc.class_directions(feats, labels)
    got = fc.angles_to_directions(feats, labels, classes, dirs)
    for i, (f, c) in enumerate(zip(feats, labels, strict=True)):
        mean = feats[labels == c].sum(axis=0)
        mean /= math.sqrt(float(mean @ mean))
        assert math.isclose(got[i], math.acos(max(-1.0, min(1.0, float(f @ mean)))),
                            abs_tol=1e-9)
    # 2-D: one class whose 20 angles are 1..20 degrees on one side -> numpy's 95th percentile
    phi = np.radians(np.arange(1.0, 21.0))
    two = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    mean_dir = math.atan2(np.sin(phi).mean(), np.cos(phi).mean())
    want = np.percentile(np.abs(phi - mean_dir), 95)
    got2 = fc.circle_gap(np.concatenate([two, -two]), np.repeat([0, 1], 20))
    assert math.isclose(got2["radius"], want, abs_tol=1e-9)


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_quick_measure_writes_a_result_and_the_circle_plot(tmp_path):
    ctx = Context(root=tmp_path / "runs", data=tmp_path / "data", figures=tmp_path / "fig",
                  quick=True, seeds=(0,), overrides=("train.threads=2",))
    result = fc.measure(ctx)
    assert result.name == "feature_circle" and result.verdict in VERDICTS
    assert result.verdict == "inconclusive"  # one seed
    assert all([result.paper, result.measurement, result.rule, result.table])
    for head in fc.QUICK_HEADS:
        assert f"`{head}`" in result.table
        assert (tmp_path / "runs" / "feature_circle" / head / "seed0" / "metrics.json").exists()
    assert len(result.figures) == 1 and Path(result.figures[0][0]).stat().st_size > 0
