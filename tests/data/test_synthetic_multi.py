"""Multi-dataset synthetic output: one identity pool, the chosen overlap, the truth CSV, the domain
shift."""

import csv
import json

import numpy as np
import pytest

from facelab.data.synthetic.multi import (
    overlap_rows,
    plan_datasets,
    run_multi_synth,
    shift_image,
    shift_nuisance,
)
from facelab.data.synthetic.nuisance import sample_nuisance
from facelab.errors import FacelabError


def test_plan_has_the_overlap_under_other_ids():
    plans = plan_datasets(3, 100, 0.3, seed=4)
    a = set(plans[0])
    for plan in plans[1:]:
        assert len(plan) == len(set(plan)) == 100
        assert len(a & set(plan)) == 30
    assert not (set(plans[1]) - a) & (set(plans[2]) - a)  # new identities are new per dataset
    moved = [c for c, pool in enumerate(plans[1]) if pool in a and plans[0].index(pool) != c]
    assert len(moved) >= 25  # shared people mostly get another class id
    rows = overlap_rows(plans, ["A", "B", "C"])
    assert len(rows) == 60
    for a_name, a_class, b_name, b_class, pool in rows:
        assert a_name == "A"
        assert plans[0][int(a_class)] == pool == plans["ABC".index(b_name)][int(b_class)]
    no_overlap = plan_datasets(2, 50, 0.0, 0)[1]
    assert no_overlap == [p for p in no_overlap if p >= 50]


def test_domain_shift():
    rng = np.random.default_rng(0)
    n = sample_nuisance(rng, "mixed")
    assert shift_nuisance(n, "hires_colour", rng).resolution == n.face_px
    dark = shift_nuisance(n, "dark_lowres", rng)
    assert dark.light == pytest.approx(0.7 * n.light) and 16 <= dark.resolution <= 32
    img = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    assert np.array_equal(shift_image(img, "hires_colour"), img)
    grey = shift_image(img, "dark_lowres").astype(int)
    colour = np.abs(img - img.mean(axis=2, keepdims=True)).mean()
    assert np.abs(grey - grey.mean(axis=2, keepdims=True)).mean() < colour


def test_writes_both_datasets_and_the_truth(tmp_path):
    out = tmp_path / "multi"
    m = run_multi_synth(out, 2, 4, 2, 0.5, seed=1, pairs=0, workers=1)
    assert m["counts"]["images"] == {"A": 8, "B": 8} and m["counts"]["shared_identities"] == 2
    with open(out / "overlap.csv") as f:
        truth = list(csv.DictReader(f))
    attrs = {}
    for name in "AB":
        with open(out / name / "attributes.csv") as f:
            attrs[name] = {r["identity"]: r["pool_identity"] for r in csv.DictReader(f)}
        assert len(list((out / name / "images").iterdir())) == 4
    for row in truth:  # the truth's classes hold the same pool identity in both datasets
        a, b = attrs["A"][str(int(row["a_class"]))], attrs["B"][str(int(row["b_class"]))]
        assert a == b == row["pool_identity"]
    assert json.loads((out / "multi.json").read_text())["params"]["overlap"] == 0.5
    assert run_multi_synth(out, 2, 4, 2, 0.5, seed=1, pairs=0, workers=1) == m  # reused
    with pytest.raises(FacelabError, match="overlap"):
        run_multi_synth(tmp_path / "x", 2, 4, 2, 1.5)
