"""facelab.experiments.common: a grid of tiny runs, reuse of complete runs, the mean ± spread table."""

import json

import numpy as np
import pytest

from facelab.demo import RECIPE
from facelab.errors import FacelabError
from facelab.experiments import common


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return common.prepare_synth(tmp_path_factory.mktemp("data"), 12, 4, 40)


def test_grid_trains_each_variant_and_seed_then_reuses_them(synth, tmp_path):
    aligned, pairs = synth
    base = [f"data.train={aligned}", f"data.val_pairs={pairs}", "train.steps=3", "data.batch_size=8",
            "train.progress=false", "train.tensorboard=false"]
    variants = {"arc": [], "cos": ["head.margin=cosface", "head.kwargs={s: 16.0}"]}
    results = common.run_grid(RECIPE, variants, [0, 1], tmp_path, common=base)
    assert set(results) == {"arc", "cos"} and set(results["arc"]) == {0, 1}
    saved = json.loads((tmp_path / "cos" / "seed1" / "metrics.json").read_text())
    assert saved["pairs"] == results["cos"][1]["pairs"]
    cfg = (tmp_path / "cos" / "seed1" / "config.yaml").read_text()
    assert "margin: cosface" in cfg and "seed: 1" in cfg
    # a complete run is read back, not retrained: its checkpoint may even be gone
    (tmp_path / "arc" / "seed0" / "checkpoint.pt").unlink()
    again = common.run_grid(RECIPE, {"arc": []}, [0], tmp_path, common=base)
    assert again["arc"][0] == json.loads((tmp_path / "arc" / "seed0" / "metrics.json").read_text())
    # settings that change neither the model nor its metrics do not stop the reuse
    quiet = [*base, "train.threads=1", "train.checkpoint_every=1", "data.workers=0"]
    assert common.run_grid(RECIPE, {"arc": []}, [0], tmp_path, common=quiet)["arc"][0] == again["arc"][0]
    # another budget is refused, naming the key: the old run never stands for the new config
    before = (tmp_path / "arc" / "seed0" / "metrics.json").read_bytes()
    with pytest.raises(FacelabError, match=r"seed0: finished with another config \(train.steps: 3 -> 5"):
        common.run_grid(RECIPE, {"arc": ["train.steps=5"]}, [0], tmp_path, common=base)
    assert (tmp_path / "arc" / "seed0" / "metrics.json").read_bytes() == before
    summary = common.summarise(results)
    assert summary["arc"]["synth-cfp"] == [results["arc"][s]["pairs"]["synth-cfp"]["accuracy"] for s in (0, 1)]


def test_table_cells_are_mean_and_population_std():
    summary = {"a": {"x": [0.90, 0.94]}, "b": {"x": [0.5]}}
    table = common.markdown_table(summary, sets=["x"], extra={"b": {"note": "one seed"}})
    lines = table.splitlines()
    assert lines[0] == "| variant | x (%) | note |"
    assert lines[2] == "| `a` | 92.00 ± 2.00 |  |"  # std ddof 0 of (90, 94) is 2
    assert lines[3] == "| `b` | 50.00 | one seed |"
    assert common.mean_spread([1.0, 2.0, 6.0]) == pytest.approx((3.0, np.std([1.0, 2.0, 6.0])))


def test_report_is_written_with_its_command(tmp_path):
    path = tmp_path / "docs" / "x.md"
    common.write_report(path, "Title", "facelab experiment x", "Intro.", "| t |", notes="Seen.")
    text = path.read_text()
    assert text.startswith("# Title\n") and "```\nfacelab experiment x\n```" in text and text.endswith("Seen.\n")


def test_rewriting_a_report_keeps_its_hand_written_part(tmp_path):
    path = tmp_path / "x.md"
    common.write_report(path, "Title", "cmd", "Intro.", "| old |")
    path.write_text(path.read_text() + f"\n{common.HAND_WRITTEN}\n\n## Observations\n\nBy hand.\n")
    common.write_report(path, "Title", "cmd", "Intro.", "| new |", notes="Notes.")
    text = path.read_text()
    assert "| new |" in text and "| old |" not in text
    assert text.index("Notes.") < text.index(common.HAND_WRITTEN)
    assert text.endswith(f"{common.HAND_WRITTEN}\n\n## Observations\n\nBy hand.\n")
    assert text.count(common.HAND_WRITTEN) == 1


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(FacelabError, match="at least one variant"):
        common.run_grid(RECIPE, {}, [0], tmp_path)
    with pytest.raises(FacelabError, match="synth-lfw"):
        common.accuracy({"pairs": {}}, "synth-lfw")
