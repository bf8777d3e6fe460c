"""Every margin head (and the GroupFace / Hard Prototype Mining / Adaptive Data Sampling options) trains
through the real `train()` loop under bf16 autocast with finite losses.

The default suite runs a few steps per head on a small folder of smooth random identities; the `slow`
test is the issue's numerical-safety run: 200 steps of every head on procedural synthetic faces
(`run_synth` + `align_folder`), bf16 autocast, every logged loss finite (`pytest -m slow tests/train`).
"""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facelab.config import config_from_dict
from facelab.heads import MARGINS
from facelab.train.checkpoint import load_checkpoint
from facelab.train.loop import train

OPTIONS = {  # extra config sections of the non-head variants
    "groupface": {"model": {"groupface": {"groups": 4, "hidden": 16}}},
    "adaptiveface_full": {"head": {"margin": "adam_softmax", "hard_prototypes": 2},
                          "data": {"adaptive_sampling": {"enabled": True}}},
}


def make_identity_folder(root: Path, classes: int = 6, per_class: int = 4, seed: int = 0) -> Path:
    """`root/id<c>/<k>.png`: each identity a smooth random colour field, each image it plus pixel noise."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        base = cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (112, 112))
        for k in range(per_class):
            path = root / f"id{c}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    return root


def recipe(train_dir: Path, out: Path, margin: str = "arcface", steps: int = 3, batch_size: int = 8,
           width: int = 4, embedding_size: int = 16, extra: dict | None = None, **train_section) -> dict:
    """A small training config as a dict (tiny backbone, one thread, bf16 autocast, every step logged)."""
    data = {
        "output": str(out),
        "seed": 0,
        "data": {"train": str(train_dir), "batch_size": batch_size, "workers": 0, "preload": True},
        "model": {"backbone": "tiny", "embedding_size": embedding_size, "kwargs": {"width": width}},
        "head": {"margin": margin},
        "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_steps": max(1, steps // 10)},
        "train": {"steps": steps, "amp": "bf16", "log_every": 1, "checkpoint_every": 10_000,
                  "progress": False, "tensorboard": False, "threads": 1, **train_section},
    }
    for section, values in (extra or {}).items():
        data[section] = {**data[section], **values}
    return data


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The recipes train on one thread (`train.threads` sets torch's global count): restore it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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
