"""Per-batch head state (AdaCos scale, CurricularFace t, AdaFace μ/σ) is saved with the head and restored
on resume, and ElasticFace's random margins continue the stream the checkpoint's RNG state holds: an interrupted
and resumed run ends with the same buffers and weights as an uninterrupted one (and so does a GroupFace + Hard
Prototype Mining run, whose extra parts live in model and head)."""

import pytest
import torch
from tests.references.tiny_runs import make_identity_folder, recipe

from facelab.config import config_from_dict
from facelab.heads import build_margin
from facelab.model import load_checkpoint
from facelab.train.loop import train

CASES = {
    "adacos": {"head": {"margin": "adacos"}},
    "curricularface": {"head": {"margin": "curricularface", "kwargs": {"s": 16.0}}},
    "adaface": {"head": {"margin": "adaface", "kwargs": {"s": 16.0, "alpha": 0.2}}},
    # draws its margins from torch's global RNG every step: exact only if the loader leaves that RNG alone
    "elasticface_arc": {"head": {"margin": "elasticface_arc", "kwargs": {"s": 16.0}}},
    "groupface_hpm": {"head": {"margin": "arcface", "kwargs": {"s": 16.0}, "hard_prototypes": 2},
                      "model": {"groupface": {"groups": 3, "hidden": 8}}},
}
BUFFERS = {"adacos": ["margin.scale"], "curricularface": ["margin.t"],
           "adaface": ["margin.mu", "margin.sigma"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_identity_folder(tmp_path_factory.mktemp("resume") / "train")


@pytest.mark.parametrize("case", sorted(CASES))
def test_resumed_run_equals_the_uninterrupted_one(folder, tmp_path, case):
    full = recipe(folder, tmp_path / "full", steps=4, extra=CASES[case], amp="none")
    part = recipe(folder, tmp_path / "part", steps=4, extra=CASES[case], amp="none")
    train(config_from_dict(full))
    train(config_from_dict(part), stop_at=2)
    middle = load_checkpoint(tmp_path / "part")["head"]
    train(config_from_dict(part), resume=True)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    initial = build_margin(**{"name": CASES[case]["head"]["margin"], **CASES[case]["head"].get("kwargs", {}),
                              **({"num_classes": 6} if case == "adacos" else {})}).state_dict()
    for key in BUFFERS.get(case, []):
        assert torch.equal(a["head"][key], b["head"][key]), key
        stored = initial[key.removeprefix("margin.")]
        assert not torch.equal(middle[key], stored) and not torch.equal(a["head"][key], middle[key]), key
    assert a["head"].keys() == b["head"].keys() and a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["head"][k], b["head"][k]) for k in a["head"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    if case == "groupface_hpm":
        assert any(k.startswith("group_logits.") for k in a["model"])
