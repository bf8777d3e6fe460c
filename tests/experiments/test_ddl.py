"""`facelab experiment ddl`: the quick plan trains the three variants on one tiny set and writes the table."""

import argparse

import pytest

from facelab.cli import build_parser
from facelab.experiments import ddl


@pytest.mark.slow  # three tiny training runs: ~30 s on a quiet 2-core machine, minutes when loaded
def test_quick_plan_trains_every_variant_and_writes_the_table(tmp_path):
    args = build_parser().parse_args(["experiment", "ddl", "--quick"])
    plan = {**vars(args), **ddl.QUICK, "data": tmp_path / "data", "out": tmp_path / "runs",
            "doc": tmp_path / "docs" / "ddl.md"}
    assert ddl._run(argparse.Namespace(**plan), quick=True) == 0
    doc = (tmp_path / "docs" / "ddl.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["arcface", "arcface+batch", "arcface+ddl"]
    assert "facelab experiment ddl --quick" in doc and "lfw − cfp (pts)" in doc
    assert (tmp_path / "docs" / "ddl_histograms.png").exists()
    assert (tmp_path / "runs" / "arcface+ddl" / "seed0" / "ddl_after.json").exists()


def test_gaps_are_taken_per_seed():
    per_set = {"synth-lfw": [0.9, 0.8], "synth-cfp": [0.7, 0.7], "synth-lowres": [0.85, 0.8]}
    cells = ddl.gaps(per_set)
    assert cells["lfw − cfp (pts)"] == "15.00 ± 5.00"  # gaps 20 and 10 points
    assert cells["lfw − lowres (pts)"] == "2.50 ± 2.50"
