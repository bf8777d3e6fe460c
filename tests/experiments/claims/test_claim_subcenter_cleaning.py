"""subcenter_cleaning: the non-dominant shares and the recovered fraction against loops, the oracle
list, and the claim in quick mode (its mechanism cache checked against `facelab clean`'s output)."""

import json
import math

import numpy as np
import pytest

from facelab.experiments.claims.base import VERDICTS, Context
from facelab.experiments.claims.subcenter_cleaning import (
    ANGLE,
    MECHANISM,
    NAME,
    _oracle_list,
    angle_auc,
    measure,
    nondominant_share,
    recovered,
)


def test_nondominant_share_against_a_loop():
    rng = np.random.default_rng(0)
    n, c, k = 200, 7, 3
    labels = rng.integers(0, c, n)
    nearest = rng.integers(0, k, n)
    dominant = rng.integers(0, k, c)
    noisy = rng.random(n) < 0.3
    off = {True: [], False: []}
    for i in range(n):
        off[bool(noisy[i])].append(nearest[i] != dominant[labels[i]])
    got = nondominant_share(nearest, dominant, labels, noisy)
    assert got == (sum(off[True]) / len(off[True]), sum(off[False]) / len(off[False]))
    # no noisy image: NaN on that side
    share = nondominant_share(nearest, dominant, labels, np.zeros(n, bool))
    assert math.isnan(share[0]) and 0 <= share[1] <= 1


def test_angle_auc_against_a_double_loop():
    rng = np.random.default_rng(2)
    angle = np.round(rng.uniform(0, 120, 60), 0)  # rounded: some ties
    noisy = rng.random(60) < 0.3
    wins = [(a > b) + 0.5 * (a == b) for a in angle[noisy] for b in angle[~noisy]]
    assert math.isclose(angle_auc(angle, noisy), sum(wins) / len(wins), abs_tol=1e-12)
    assert angle_auc(np.array([10.0, 20, 80, 90]), np.array([False, False, True, True])) == 1.0
    assert math.isnan(angle_auc(angle, np.zeros(60, bool)))


def test_recovered_fraction():
    assert recovered(0.70, 0.78, 0.80) == (0.78 - 0.70) / (0.80 - 0.70)
    assert recovered(0.70, 0.65, 0.80) < 0  # cleaning made it worse
    assert math.isnan(recovered(0.80, 0.81, 0.80))  # noise cost nothing


def test_oracle_list_drops_exactly_the_relabelled_photos(tmp_path):
    aligned = tmp_path / "aligned"
    for ident, names in {"00000": ["00.jpg", "01.jpg", "00001-02.jpg"],
                         "00001": ["00.jpg", "01.jpg"], "00002": ["00.jpg"]}.items():
        (aligned / ident).mkdir(parents=True)
        for name in names:
            (aligned / ident / name).write_bytes(b"")
    truth = tmp_path / "label_noise.csv"
    # the generator's paths under images/ and its .jpg names; the aligned copy keeps folder and stem
    truth.write_text("image,true_identity,assigned_identity\n00000/00001-02.jpg,1,0\n"
                     "00002/00.jpg,1,2\n")
    rows = [line.split() for line in _oracle_list(aligned, truth).read_text().splitlines()]
    assert rows == [["00000/00.jpg", "0"], ["00000/01.jpg", "0"], ["00001/00.jpg", "1"],
                    ["00001/01.jpg", "1"]]


# slow: tests/experiments/claims/test_claims_quick.py runs every claim quick in make test
@pytest.mark.slow
def test_measure_quick(tmp_path):
    ctx = Context(root=tmp_path / "runs", data=tmp_path / "data", figures=tmp_path / "fig",
                  quick=True, seeds=(0,))
    r = measure(ctx)
    assert r.name == NAME and r.verdict in VERDICTS and r.verdict == "inconclusive"
    assert r.paper and r.measurement and r.rule and "| noise |" in r.table
    assert r.figures and all((tmp_path / "fig").joinpath(p).exists() for p, _ in r.figures)
    # the mechanism cache agrees with `facelab clean`'s own report (angle threshold, truth)
    k3 = next((ctx.root / NAME).glob("*subcenter_k3/seed0"))
    report = json.loads((k3 / "cleaned" / "clean.json").read_text())
    with np.load(k3 / MECHANISM) as z:
        drop, noisy = z["angle"] > ANGLE, z["noisy"]
    assert report["counts"]["dropped"] == drop.sum()
    assert report["truth"]["noisy"] == noisy.sum()
    assert report["truth"]["dropped_noisy"] == (drop & noisy).sum()
