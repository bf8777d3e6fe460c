"""`distill.name: ddl` in a real (tiny) training run: logged terms, histogram plots, exact resume."""

import json

import pytest
import torch

from facelab.config import load_config
from facelab.demo import RECIPE
from facelab.errors import FacelabError
from facelab.experiments.common import prepare_synth
from facelab.model import load_checkpoint
from facelab.train.loop import train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    aligned, pairs = prepare_synth(data, 12, 8, 40)
    return data, aligned, pairs


def cfg_for(synth, out, *extra):
    data, aligned, pairs = synth
    base = [f"data.train={aligned}", f"data.val_pairs={pairs[:1]}", "train.steps=4", "data.batch_size=8",
            "train.progress=false", "train.tensorboard=false", "train.log_every=1", f"output={out}",
            "distill.name=ddl", "distill.identities_per_batch=2", "distill.plot_identities=2"]
    return load_config(RECIPE, [*base, *extra])


@pytest.mark.parametrize("split", ["degradation", pytest.param("attribute", marks=pytest.mark.slow)])
def test_ddl_terms_are_logged_and_histograms_drawn(synth, tmp_path, split):
    extra = ["distill.split=degradation"] if split == "degradation" else [
        "distill.split=attribute", f"distill.attributes={synth[0] / 'attributes.csv'}",
        "distill.easy_max_yaw=12", "distill.hard_min_yaw=12"]  # 8 photos per identity: loosen the thresholds
    train(cfg_for(synth, tmp_path, *extra))
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    first = lines[0]
    for term in ("ddl_kl_pos", "ddl_kl_neg", "ddl_order"):
        assert f"loss/{term}" in first
    parts = first["loss/ce"] + first["loss/ddl_kl_pos"] + first["loss/ddl_kl_neg"] + first["loss/ddl_order"]
    assert first["loss/loss"] == pytest.approx(parts, rel=1e-5)
    assert first["loss/ddl_kl_pos"] > 0  # teacher and student distributions differ at the start
    before = json.loads((tmp_path / "ddl_before.json").read_text())
    assert len(before["teacher_pos"]) > 0 and len(before["student_neg"]) > 0
    assert (tmp_path / "ddl_histograms.png").stat().st_size > 1000


@pytest.mark.slow  # three tiny runs
def test_resumed_ddl_run_matches_an_uninterrupted_one(synth, tmp_path):
    extra = ["distill.split=degradation"]
    train(cfg_for(synth, tmp_path / "full", *extra))
    train(cfg_for(synth, tmp_path / "cut", *extra), stop_at=2)
    train(cfg_for(synth, tmp_path / "cut", *extra), resume=True)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=0, atol=0)
    assert json.loads((tmp_path / "full" / "ddl_before.json").read_text()) == json.loads(
        (tmp_path / "cut" / "ddl_before.json").read_text())


def test_bad_distill_settings_name_the_key(synth, tmp_path):
    with pytest.raises(FacelabError, match="distill.attributes"):
        train(cfg_for(synth, tmp_path, "distill.split=attribute"))
    with pytest.raises(FacelabError, match="distill.split"):
        cfg_for(synth, tmp_path, "distill.split=pose")
    with pytest.raises(FacelabError, match="adaptive_sampling"):
        train(cfg_for(synth, tmp_path / "c", "distill.split=degradation", "data.adaptive_sampling.enabled=true"))
    with pytest.raises(FacelabError, match="distill.plot_identities"):
        train(cfg_for(synth, tmp_path / "b", "distill.split=degradation", "distill.plot_identities=9"))
