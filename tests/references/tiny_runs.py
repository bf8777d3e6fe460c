"""Tiny training runs: a folder of smooth random identities and a small recipe for `train()`."""

from pathlib import Path

import cv2
import numpy as np


def make_identity_folder(root: Path, classes: int = 6, per_class: int = 4, seed: int = 0) -> Path:
    """`root/id<c>/<k>.png`: each identity a smooth random colour field, each image it plus
    noise."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        base = cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (112, 112))
        for k in range(per_class):
            path = root / f"id{c}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(path), noisy)
    return root


def recipe(
    train_dir: Path,
    out: Path,
    margin: str = "arcface",
    steps: int = 3,
    batch_size: int = 8,
    width: int = 4,
    embedding_size: int = 16,
    extra: dict | None = None,
    **train_section,
) -> dict:
    """A small training config as a dict (tiny backbone, one thread, bf16 autocast, every step
    logged); `extra` updates whole sections, `train_section` the train section."""
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
