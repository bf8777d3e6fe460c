"""The loop's loader and sync points: exact resume with persistent workers; NaN caught before any checkpoint."""

import cv2
import numpy as np
import pytest
import torch

from facelab.config import config_from_dict
from facelab.errors import FacelabError
from facelab.model import CHECKPOINT_NAME, load_checkpoint
from facelab.train.loop import train


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4 identities × 4 noisy 112×112 JPEGs around one colour each."""
    root = tmp_path_factory.mktemp("perf") / "train"
    rng = np.random.default_rng(0)
    for c in range(4):
        base = rng.uniform(0, 255, 3)
        for k in range(4):
            (root / f"id{c}").mkdir(parents=True, exist_ok=True)
            image = np.clip(base + rng.normal(0, 20, (112, 112, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"id{c}" / f"{k}.jpg"), image)
    return root


def _cfg(root, out, workers=0, **train):
    return config_from_dict({
        "output": str(out),
        "data": {"train": str(root), "batch_size": 8, "workers": workers},
        "model": {"backbone": "tiny", "embedding_size": 16},
        "head": {"margin": "arcface", "kwargs": {"s": 16.0, "m": 0.3}},
        "optim": {"lr": 0.05},
        "train": {"steps": 6, "log_every": 2, "checkpoint_every": 100, "progress": False, "tensorboard": False,
                  **train},
    })


def test_resume_with_persistent_workers_is_exact(folder, tmp_path):
    """4 steps over 2-batch epochs with 2 workers, stopped at step 3 and resumed, equal a 0-worker run."""
    train(_cfg(folder, tmp_path / "ref", steps=4))
    train(_cfg(folder, tmp_path / "part", workers=2, steps=4), stop_at=3)
    train(_cfg(folder, tmp_path / "part", workers=2, steps=4), resume=True)
    a, b = load_checkpoint(tmp_path / "ref")["model"], load_checkpoint(tmp_path / "part")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_stops_the_run_before_a_checkpoint(folder, tmp_path):
    """Checked only at log/eval/checkpoint steps, a diverged run names the same first bad step as a check
    every step (log_every=1) and never writes its weights."""
    messages = []
    for name, train_kw in (("every", {"log_every": 1}), ("periodic", {"log_every": 100, "checkpoint_every": 2})):
        cfg = _cfg(folder, tmp_path / name, steps=3, **train_kw)
        cfg.optim.lr = 1e30
        with pytest.raises(FacelabError, match="loss is") as err:
            train(cfg)
        messages.append(str(err.value))
        assert not (tmp_path / name / CHECKPOINT_NAME).exists()
    assert messages[0] == messages[1] and not messages[0].startswith("step 0:")
