"""The training loop end to end on a tiny image folder: runs, logs, resumes exactly, evaluates."""

import json

import numpy as np
import pytest
import torch

from facelab.backbones import build_backbone
from facelab.config import config_from_dict
from facelab.errors import FacelabError
from facelab.heads import build_head
from facelab.model import load_checkpoint
from facelab.train.loop import train


def _cfg(root, out, **train):
    return config_from_dict(
        {
            "output": str(out),
            "data": {"train": str(root / "train"), "val_pairs": [str(root / "val.bin")], "batch_size": 8,
                     "workers": 0},
            "model": {"backbone": "tiny", "embedding_size": 16},
            "head": {"margin": "arcface", "kwargs": {"s": 16.0, "m": 0.3}},
            "optim": {"lr": 0.05},
            "schedule": {"name": "cosine", "warmup_steps": 2},
            "train": {"steps": 6, "log_every": 1, "checkpoint_every": 100, "progress": False,
                      "tensorboard": False, **train},
        }
    )


def _weights(run):
    return load_checkpoint(run)["model"]


def test_resume_is_exact(tiny_data, tmp_path):
    full = train(_cfg(tiny_data, tmp_path / "full"))
    assert full["train"]["steps"] == 6 and set(full["pairs"]) == {"val"}
    part = train(_cfg(tiny_data, tmp_path / "part"), stop_at=3)
    assert part["train"]["complete"] is False and not (tmp_path / "part" / "metrics.json").exists()
    # lines the interrupted run logged after its checkpoint must not survive the resume
    with (tmp_path / "part" / "log.jsonl").open("a") as f:
        f.write(json.dumps({"step": 4, "loss/loss": 123.0}) + "\n")
    train(_cfg(tiny_data, tmp_path / "part"), resume=True)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_full = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    log_part = [json.loads(x) for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_part] == [r["step"] for r in log_full]
    assert [r.get("loss/loss") for r in log_part] == [r.get("loss/loss") for r in log_full]


def test_outputs_and_checkpoint_contents(tiny_data, tmp_path):
    summary = train(_cfg(tiny_data, tmp_path / "r"))
    run = tmp_path / "r"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pairs"]["val"]["accuracy"] == summary["pairs"]["val"]["accuracy"]
    assert len(metrics["pairs"]["val"]["fold_accuracies"]) == 10
    assert metrics["train"]["images_per_second"] > 0
    assert (run / "roc.png").read_bytes()[:4] == b"\x89PNG" and (run / "config.yaml").exists()
    ckpt = load_checkpoint(run)
    assert ckpt["preprocess"] == {"template": "arcface112", "size": 112, "colour": "RGB", "mean": 0.5, "std": 0.5}
    assert ckpt["config"]["model"]["backbone"] == "tiny" and ckpt["step"] == 6


def test_refuses_to_overwrite_or_resume_nothing(tiny_data, tmp_path):
    train(_cfg(tiny_data, tmp_path / "r", steps=1))
    with pytest.raises(FacelabError, match="holds a run already"):
        train(_cfg(tiny_data, tmp_path / "r", steps=1))
    with pytest.raises(FacelabError, match="nothing to resume"):
        train(_cfg(tiny_data, tmp_path / "other"), resume=True)


def test_bad_data_and_loss_blowup(tiny_data, tmp_path):
    with pytest.raises(FacelabError, match="does not exist"):
        train(config_from_dict({"output": str(tmp_path / "x"), "data": {"train": str(tmp_path / "none")}}))
    cfg = _cfg(tiny_data, tmp_path / "big")
    cfg.data.batch_size = 100
    with pytest.raises(FacelabError, match="data.batch_size"):
        train(cfg)
    cfg = _cfg(tiny_data, tmp_path / "nan", steps=3)
    cfg.optim.lr = 1e30
    with pytest.raises(FacelabError, match="loss is"):
        train(cfg)


@pytest.mark.parametrize("amp", ["bf16"])
def test_autocast_runs(tiny_data, tmp_path, amp):
    summary = train(_cfg(tiny_data, tmp_path / amp, steps=2, amp=amp))
    assert np.isfinite(summary["pairs"]["val"]["accuracy"])


@pytest.mark.slow  # inductor compiles C++ kernels on CPU: about a minute
def test_compiled_backbone_has_the_eager_gradients_in_float64():
    """torch.compile of the backbone computes the eager forward and gradients: in float64 to ~1e-13 of the
    largest gradient (in float32 the fused kernels' other summation order gives ~1e-6 here, and more on data
    where the early layers' gradients cancel, see the training-run test below)."""
    torch.manual_seed(0)
    net = build_backbone("tiny", embedding_size=16).double().train()
    head = build_head("arcface", 16, 6, s=16.0, m=0.3).double()
    x, y = torch.randn(8, 3, 112, 112, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    grads = {}
    for name, forward in (("eager", net), ("compiled", torch.compile(net))):
        net.zero_grad()
        loss = head(forward(x), y)["loss"]
        loss.backward()
        grads[name] = (loss.item(), [p.grad.clone() for p in net.parameters() if p.grad is not None])
    assert grads["compiled"][0] == pytest.approx(grads["eager"][0], rel=1e-13)
    scale = max(g.abs().max().item() for g in grads["eager"][1])
    for a, b in zip(grads["compiled"][1], grads["eager"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * scale)


@pytest.mark.slow  # inductor compiles C++ kernels on CPU: about a minute
def test_compiled_forward_trains_like_eager(tiny_data, tmp_path):
    """train.compile=true in the loop: the same first loss, weights after one step equal to float32 rounding
    (the first two convolutions' gradients cancel strongly on these smooth test images, so their float32
    rounding shows at ~1e-3 of the weights' scale; exactness is the float64 test above), and the plain
    module's keys in the checkpoint, so it loads without torch.compile."""
    runs = {"eager": {}, "compiled": {"compile": True}}
    for name, extra in runs.items():
        train(_cfg(tiny_data, tmp_path / name, steps=1, **extra))
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert a.keys() == b.keys()
    scale = max(v.abs().max().item() for v in a.values() if v.is_floating_point())
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-3 * scale, msg=key)
    losses = [[json.loads(line)["loss/loss"] for line in (tmp_path / name / "log.jsonl").open()
               if "loss/loss" in line] for name in runs]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
