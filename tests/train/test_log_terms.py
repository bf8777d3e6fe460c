"""The training loop logs every term of the head's loss dict: MagFace's regulariser as `loss/reg`.

FaceHead returns {"loss", "ce", "reg"} for a margin with a regulariser (facelab.heads.head) and the loop
writes each as `loss/<key>` to log.jsonl (facelab.train.loop). MagFace's term is λ_g·mean g(a),
g(a) = 1/a + a/u_a² (METHODS.md), positive for every feature norm.
"""

import json
import math

import pytest
from tests.references.tiny_runs import make_identity_folder, recipe

from facelab.config import config_from_dict
from facelab.train.loop import train


def test_magface_regulariser_is_logged_every_step(tmp_path):
    train_dir = make_identity_folder(tmp_path / "train", classes=4, per_class=4)
    out = tmp_path / "magface"
    train(config_from_dict(recipe(train_dir, out, steps=2, extra={"head": {"margin": "magface"}})))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss/loss" in r]
    assert [r["step"] for r in losses] == [1, 2]
    for r in losses:
        assert math.isfinite(r["loss/reg"]) and r["loss/reg"] > 0, r
        assert math.isfinite(r["loss/ce"]) and r["loss/ce"] > 0, r
        assert r["loss/loss"] == pytest.approx(r["loss/ce"] + r["loss/reg"], rel=1e-5), r
