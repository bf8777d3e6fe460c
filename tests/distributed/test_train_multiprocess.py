"""train() on 2 gloo processes (DDP backbone with global BatchNorm, sharded classifier) gives the weights,
classifier, optimizer state and validation accuracy of one process on the same global batches; a run
stopped on one world size resumes on the other and ends where the uninterrupted run ends."""

import json

import cv2
import numpy as np
import pytest
import torch

from facelab.config import config_from_dict
from facelab.data.pairsets import load_bin, write_bin
from facelab.distributed.spawn import spawn
from facelab.eval.embed import embed_images
from facelab.eval.verification import pair_distances, verify_pairs
from facelab.train.checkpoint import load_checkpoint
from facelab.train.loop import train
from facelab.train.task import load_model
from float_paths import DIST_TOL, fold_accuracies_within

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 identities × 4 images of 112 px (smooth colour field + noise), 20 validation pairs."""
    root = tmp_path_factory.mktemp("mp")
    rng = np.random.default_rng(0)
    bases = [cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (112, 112)) for _ in range(8)]
    noisy = lambda c: np.clip(bases[c] + rng.normal(0, 12, bases[c].shape), 0, 255).astype(np.uint8)  # noqa: E731
    for c in range(6):
        for k in range(4):
            path = root / "train" / f"id{c}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), noisy(c))
    images, same = [], []
    for i in range(20):
        a, b = (6, 6) if i % 2 == 0 else (6, 7)
        images += [noisy(a), noisy(b)]
        same.append(a == b)
    write_bin(root / "val.bin", images, same)
    return root


def cfg_dict(root, out, steps=4, **head):
    return {
        "output": str(out),
        "data": {"train": str(root / "train"), "val_pairs": [str(root / "val.bin")], "batch_size": 8, "workers": 0},
        "model": {"backbone": "tiny", "embedding_size": 16},
        "head": {"margin": "arcface", "kwargs": {"s": 16.0, "m": 0.3}, **head},
        "optim": {"lr": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {"steps": steps, "log_every": 1, "checkpoint_every": 100, "progress": False,
                  "tensorboard": False, "threads": 1},
    }


def worker(rank, size, d, resume, stop_at):
    train(config_from_dict(d), resume=resume, stop_at=stop_at)


def close(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            close(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=2e-5, msg=what)


def same_run(a, b):
    """Weights, classifier and the classifier's optimizer rows to float32 rounding. The backbone's momentum
    buffers sum raw gradients in which the two ranks' float32 partial sums cancel (BatchNorm over the global
    batch): they agree to about 1e-3 of the state's scale, not to 1e-5; exact equality of every gradient is
    checked in float64 by test_task_float64.py."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    for key in ("model", "head"):
        close(ca[key], cb[key], key)
    centres = ca["head"]["classifier.weight"].shape
    scale = max(s["momentum_buffer"].abs().max().item() for s in ca["optimizer"]["state"].values())
    states = zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True)
    for i, (x, y) in enumerate(states):
        x, y = x["momentum_buffer"], y["momentum_buffer"]
        if x.shape == centres:  # the classifier's rows, gathered from the shards: float32 rounding only
            close(x, y, f"optimizer.state.{i} (centres)")
        else:
            torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4 * scale, msg=f"optimizer.state.{i}")
    assert ca["step"] == cb["step"]


def val_distances(run, root):
    """(squared distances [20], same [20], verification accuracy) of the validation pairs embedded
    with `run`'s weights as the one-process loop does (batch 2 x data.batch_size, one thread)."""
    model, pre = load_model(run)
    images, same = load_bin(root / "val.bin")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        emb = embed_images(model, images, batch_size=16, preprocess=pre)
    finally:
        torch.set_num_threads(threads)
    accuracy = verify_pairs(emb[0::2], emb[1::2], same)["accuracy"]
    return pair_distances(emb[0::2], emb[1::2]), same, accuracy


def accuracies_near(d, same, drift):
    """The verification accuracies a run can report whose distances are d [20] up to `drift` (its
    weights' float32 difference) and another evaluation path (sharded over the ranks: DIST_TOL).
    One value, which both runs must report, unless a distance lies that close to a grid point."""
    return {float(np.mean(f)) for f in fold_accuracies_within(d, same, drift + DIST_TOL)}


@pytest.mark.slow  # ~60 s on the loaded 2-core machine (spawned imports, 4 steps at 112 px)
def test_two_processes_train_like_one(data, tmp_path):
    one = train(config_from_dict(cfg_dict(data, tmp_path / "one")))
    spawn(worker, 2, cfg_dict(data, tmp_path / "two"), False, None)
    same_run(tmp_path / "one", tmp_path / "two")
    assert load_checkpoint(tmp_path / "two")["head"]["classifier.weight"].shape == (6, 16)  # the full classifier
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # sharded verification in float32 on 2 processes: the one-process accuracy up to rounding (the
    # one-process evaluation is recomputed exactly first: the same path)
    d_one, same, accuracy = val_distances(tmp_path / "one", data)
    assert accuracy == one["pairs"]["val"]["accuracy"]
    drift = float(np.abs(val_distances(tmp_path / "two", data)[0] - d_one).max())
    assert two["pairs"]["val"]["accuracy"] in accuracies_near(d_one, same, drift)


@pytest.mark.slow
def test_resume_across_world_sizes(data, tmp_path):
    train(config_from_dict(cfg_dict(data, tmp_path / "ref")))
    spawn(worker, 2, cfg_dict(data, tmp_path / "a"), False, 2)  # 2 processes, stop, 1 process
    train(config_from_dict(cfg_dict(data, tmp_path / "a")), resume=True)
    same_run(tmp_path / "ref", tmp_path / "a")
    train(config_from_dict(cfg_dict(data, tmp_path / "b")), stop_at=2)  # 1 process, stop, 2 processes
    spawn(worker, 2, cfg_dict(data, tmp_path / "b"), True, None)
    same_run(tmp_path / "ref", tmp_path / "b")
