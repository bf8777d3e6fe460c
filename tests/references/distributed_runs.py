"""A tiny recipe run by one process and by two (gloo), and the comparisons of the two runs: weights,
optimizer state and the verification accuracies their float32 difference allows."""

import numpy as np
import torch
from tests.references.float_paths import DIST_TOL, fold_accuracies_within

from facelab.data.pairsets import load_bin
from facelab.eval.embed import embed_images
from facelab.eval.protocols.verification import pair_distances, verify_pairs
from facelab.model import load_checkpoint, load_model


def cfg_dict(root, out, steps=4, **head):
    return {
        "output": str(out),
        "data": {
            "train": str(root / "train"),
            "val_pairs": [str(root / "val.bin")],
            "batch_size": 8,
            "workers": 0,
        },
        "model": {"backbone": "tiny", "embedding_size": 16},
        "head": {"margin": "arcface", "kwargs": {"s": 16.0, "m": 0.3}, **head},
        "optim": {"lr": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 2},
        "train": {
            "steps": steps,
            "log_every": 1,
            "checkpoint_every": 100,
            "progress": False,
            "tensorboard": False,
            "threads": 1,
        },
    }


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
    """Weights, classifier and the classifier's optimizer rows to float32 rounding.

    The backbone's momentum buffers sum raw gradients in which the two ranks' float32 partial sums
    cancel (BatchNorm over the global batch): they agree to about 1e-3 of the state's scale, not to
    1e-5; exact equality of every gradient is checked in float64 by
    tests/distributed/test_task_float64.py."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    for key in ("model", "head"):
        close(ca[key], cb[key], key)
    centres = ca["head"]["classifier.weight"].shape
    scale = max(s["momentum_buffer"].abs().max().item() for s in ca["optimizer"]["state"].values())
    states = zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True)
    for i, (x, y) in enumerate(states):
        x, y = x["momentum_buffer"], y["momentum_buffer"]
        if (
            x.shape == centres
        ):  # the classifier's rows, gathered from the shards: float32 rounding only
            close(x, y, f"optimizer.state.{i} (centres)")
        else:
            torch.testing.assert_close(
                x, y, rtol=1e-3, atol=1e-4 * scale, msg=f"optimizer.state.{i}"
            )
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
