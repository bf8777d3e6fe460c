"""A multi-dataset run end to end: union, fixed-share batches, dataset-aware head, GRL objective; exact resume."""

import cv2
import numpy as np
import pytest
import torch

from facelab.config import config_from_dict
from facelab.errors import FacelabError
from facelab.model import load_checkpoint
from facelab.train.loop import train


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dail")
    rng = np.random.default_rng(0)
    for name, classes in (("A", 3), ("B", 4)):
        for c in range(classes):
            base = cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (112, 112))
            for k in range(4):
                path = root / name / f"id{c}" / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    return root


def _cfg(root, out, **extra):
    data = {"datasets": [{"path": str(root / "A")}, {"path": str(root / "B"), "weight": 2.0}], "batch_size": 6,
            "workers": 0}
    return config_from_dict({
        "output": str(out), "data": data, "model": {"backbone": "tiny", "embedding_size": 16},
        "head": {"margin": "cosface", "kwargs": {"s": 16.0}, "dataset_aware": True, "crossing_dropout": 0.3},
        "dail": {"weight": 0.5, "adversarial_from": 3, "warmup_steps": 2, **extra},
        "optim": {"lr": 0.05},
        "train": {"steps": 6, "log_every": 1, "checkpoint_every": 100, "progress": False, "tensorboard": False},
    })


@pytest.mark.slow  # about 20 s on a quiet 2-core machine
def test_multi_dataset_run_resumes_exactly(two_sets, tmp_path):
    straight = train(_cfg(two_sets, tmp_path / "a"))
    assert straight["train"]["num_classes"] == 7 and straight["train"]["num_images"] == 28
    train(_cfg(two_sets, tmp_path / "b"), stop_at=4)
    train(_cfg(two_sets, tmp_path / "b"), resume=True)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for key in ("model", "head", "objectives"):
        for name, value in a[key].items():
            torch.testing.assert_close(value, b[key][name], msg=f"{key}.{name}")
    assert "dail.classifier.0.weight" in a["objectives"]  # the dataset classifier is saved and resumed


def test_dataset_aware_needs_several_datasets(two_sets, tmp_path):
    cfg = config_from_dict({"output": str(tmp_path / "c"), "data": {"train": str(two_sets / "A"), "batch_size": 4,
                            "workers": 0}, "model": {"backbone": "tiny", "embedding_size": 16},
                            "head": {"dataset_aware": True}, "train": {"steps": 1, "progress": False,
                                                                         "tensorboard": False}})
    with pytest.raises(FacelabError, match="data.datasets"):
        train(cfg)
