"""Every margin head (and the GroupFace / Hard Prototype Mining / Adaptive Data Sampling options) trains
through the real `train()` loop under bf16 autocast with finite losses.

The default suite runs a few steps per head on a small folder of smooth random identities; the `slow`
test is the numerical-safety run: 200 steps of every head on procedural synthetic faces
(`run_synth` + `align_folder`), bf16 autocast, every logged loss finite (`pytest -m slow tests/train`).
"""

import json
import math
from pathlib import Path

import pytest
import torch
from tests.references.tiny_runs import make_identity_folder, recipe

from facelab.config import config_from_dict
from facelab.heads import MARGINS
from facelab.model import load_checkpoint
from facelab.train.loop import train

OPTIONS = {  # extra config sections of the non-head variants
    "groupface": {"model": {"groupface": {"groups": 4, "hidden": 16}}},
    "adaptiveface_full": {"head": {"margin": "adam_softmax", "hard_prototypes": 2},
                          "data": {"adaptive_sampling": {"enabled": True}}},
}


def assert_finite_run(run: Path, steps: int) -> None:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss/loss" in r]
    assert [r["step"] for r in losses] == list(range(1, steps + 1))
    bad = [(r["step"], k, v) for r in losses for k, v in r.items() if k.startswith("loss/")]
    bad = [b for b in bad if not math.isfinite(b[2])]
    assert not bad, bad
    ckpt = load_checkpoint(run)
    for part in ("model", "head"):
        floats = [v for v in ckpt[part].values() if v.is_floating_point()]
        assert floats and all(torch.isfinite(v).all() for v in floats), part


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    return make_identity_folder(tmp_path_factory.mktemp("heads") / "train")


@pytest.mark.parametrize("name", sorted(MARGINS) + sorted(OPTIONS))
def test_a_few_steps_of_every_head(identities, tmp_path, name):
    extra = OPTIONS.get(name, {"head": {"margin": name}})
    train(config_from_dict(recipe(identities, tmp_path / name, steps=3, extra=extra)))
    assert_finite_run(tmp_path / name, 3)
    if name == "groupface":
        assert "loss/groupface" in (tmp_path / name / "log.jsonl").read_text()


@pytest.fixture(scope="module")
def synthetic_faces(tmp_path_factory):
    from facelab.align.folder import align_folder
    from facelab.data.synthetic import run_synth

    root = tmp_path_factory.mktemp("synth")
    run_synth(root, identities=40, images_per_identity=8, seed=0, pairs=0, workers=1)
    align_folder(root / "images", root / "aligned", root / "landmarks.csv", workers=1)
    return root / "aligned"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MARGINS) + sorted(OPTIONS))
def test_200_steps_of_every_head_under_bf16_autocast(synthetic_faces, tmp_path, name):
    extra = OPTIONS.get(name, {"head": {"margin": name}})
    cfg = recipe(synthetic_faces, tmp_path / name, steps=200, batch_size=32, width=8, embedding_size=128,
                 extra=extra)
    train(config_from_dict(cfg))
    assert_finite_run(tmp_path / name, 200)
