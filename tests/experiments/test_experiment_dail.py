"""facelab experiment dail: every variant is a valid config; the --quick run writes its table."""

import argparse

import pytest

from facelab.config import load_config
from facelab.demo import RECIPE
from facelab.experiments import dail


def test_variants_are_valid_configs(tmp_path):
    folders = {0.0: (tmp_path / "o0/A", tmp_path / "o0/B"), 0.3: (tmp_path / "o30/A", tmp_path / "o30/B")}
    grid = dail.variants(folders, 300, 0.02, 0.1)
    assert list(grid)[0] == "a-single-A" and len(grid) == 9
    cfgs = {name: load_config(RECIPE, overrides) for name, overrides in grid.items()}
    assert cfgs["a-single-A"].data.train == str(tmp_path / "o0/A") and not cfgs["a-single-A"].data.datasets
    merge, aware = cfgs["b-merge-30%"], cfgs["c-aware-30%"]
    assert [e.path for e in merge.data.datasets] == [str(tmp_path / "o30/A"), str(tmp_path / "o30/B")]
    assert not merge.head.dataset_aware and aware.head.dataset_aware and aware.head.crossing_dropout == 0
    assert cfgs["d-crossing-0%"].head.crossing_dropout == 0.02
    grl = cfgs["e-grl-0%"].dail
    assert grl.weight == 0.1 and grl.adversarial_from == 180 and cfgs["e-grl-0%"].head.crossing_dropout == 0.02


def test_command_line_is_recorded():
    p = argparse.ArgumentParser()
    dail.add_arguments(p)
    args = p.parse_args(["--steps", "250", "--seeds", "0", "1"])
    assert "--steps 250" in dail.command_line(args) and "--seeds 0 1" in dail.command_line(args)
    assert "EP4179476A1" in dail.intro(args)


@pytest.mark.slow  # synthesises 4 tiny datasets and trains 9 runs of 3 steps: about a minute
def test_quick_mode_writes_the_table():
    p = argparse.ArgumentParser()
    dail.add_arguments(p)
    args = p.parse_args(["--quick"])
    assert dail.run(args) == 0
    text = args.doc.read_text()  # quick mode writes into a temporary folder
    assert "| `c-aware-30%` |" in text and "| `e-grl-0%` |" in text and "EP4179476A1" in text
