"""`facelab experiment pairs --quick`: every row trains on tiny sets and lands in the table."""

import math

import pytest

from facelab.cli import main
from facelab.experiments.pairs import adacos_scale, variants


def test_adacos_scale_and_variants():
    assert adacos_scale(301) == math.sqrt(2) * math.log(300)
    rows = variants(301, 4)
    assert set(rows) == {"contrastive", "triplet_semihard", "margin_distance_weighted", "margin_uniform_histogram",
                         "arcface_adacos_scale"}
    assert "head.kwargs={s: 8.0664, m: 0.5}" in rows["arcface_adacos_scale"]
    pair_rows = [v for k, v in rows.items() if k != "arcface_adacos_scale"]
    assert all("objective=pairs" in v and "data.sampler=pk" in v for v in pair_rows)


@pytest.mark.slow  # 10 tiny training runs: ~1-2 min on a quiet 2-core machine
def test_quick_experiment_writes_the_table(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert main(["experiment", "pairs", "--quick"]) == 0
    (doc,) = tmp_path.glob("facelab-pairs-*/pairs.md")
    text = doc.read_text()
    for set_name in ("small", "large"):
        for row in variants(12, 2):
            assert f"`{set_name}/{row}`" in text
    assert "facelab experiment pairs --quick" in text
