"""Fixtures shared by every test folder (a folder's own shared fixtures go in its conftest.py;
shared non-fixture helpers and reference transcriptions in tests/references/)."""

import atexit
import os
import shutil
import tempfile

import pytest

# Scratch caches for matplotlib / inductor so tests never write to $HOME (ASSETS.md); removed at exit.
_scratch = tempfile.mkdtemp(prefix="facelab-test-cache-")
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
for var in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR"):
    os.environ.setdefault(var, os.path.join(_scratch, var.lower()))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """A training run sets torch's global thread count (`train.threads`): restore it after each
    test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """`train/`: 6 identities × 4 images of 112 px, each identity a fixed smooth colour field plus
    noise; `val.bin`: 20 pairs of two held-out identities (even pairs same)."""
    import cv2
    import numpy as np

    from facelab.data.pairsets import write_bin

    def noisy(base):
        return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    bases = [cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (112, 112)) for _ in range(8)]
    for c in range(6):
        for k in range(4):
            path = root / "train" / f"id{c}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), noisy(bases[c]))
    images, same = [], []
    for i in range(20):
        a, b = (6, 6) if i % 2 == 0 else (6, 7)
        images += [noisy(bases[a]), noisy(bases[b])]
        same.append(a == b)
    write_bin(root / "val.bin", images, same)
    return root
