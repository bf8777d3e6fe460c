"""`facelab experiment heads`: the quick plan trains the named head recipes on one tiny set and writes the table."""

import argparse

import pytest

from facelab.cli import build_parser
from facelab.errors import FacelabError
from facelab.experiments import heads


def test_quick_plan_trains_each_recipe_and_writes_the_table(tmp_path):
    args = build_parser().parse_args(["experiment", "heads", "--quick", "--only", "arcface", "subcenter_arcface"])
    plan = {**vars(args), **heads.QUICK, "data": tmp_path / "data", "out": tmp_path / "runs",
            "doc": tmp_path / "heads.md"}
    assert heads._run(argparse.Namespace(**plan), quick=True) == 0
    doc = (tmp_path / "heads.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["arcface", "subcenter_arcface"]
    assert "facelab experiment heads --quick" in doc
    for name in ("arcface", "subcenter_arcface"):
        assert (tmp_path / "runs" / name / "seed0" / "metrics.json").exists()


def test_recipes_lists_every_config_and_rejects_unknown_names():
    assert {"arcface", "groupface", "adaptiveface"} <= set(heads.recipes())
    with pytest.raises(FacelabError, match="nope"):
        heads.recipes(["nope"])


def test_no_recipes_is_an_error_naming_the_folder(tmp_path, monkeypatch):
    """An install without configs/heads/*.yaml must fail loudly, not write an empty table."""
    empty = tmp_path / "configs" / "heads"
    empty.mkdir(parents=True)
    monkeypatch.setattr(heads, "RECIPES", empty)
    with pytest.raises(FacelabError, match="no head recipes") as err:
        heads.recipes()
    assert str(empty) in str(err.value)
    args = build_parser().parse_args(["experiment", "heads", "--quick"])
    plan = {**vars(args), **heads.QUICK, "data": tmp_path / "data", "out": tmp_path / "runs",
            "doc": tmp_path / "heads.md"}
    with pytest.raises(FacelabError, match="no head recipes"):
        heads._run(argparse.Namespace(**plan), quick=True)
    assert not (tmp_path / "heads.md").exists() and not (tmp_path / "data").exists()
