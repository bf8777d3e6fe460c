"""The insightface recipes (configs/insightface/) carry arcface_torch's published values and train.

The truth is insightface's code, transcribed here: deepinsight/insightface 7fadd42,
recognition/arcface_torch/ — configs/<recipe>.py (PUBLISHED) merged onto configs/base.py (BASE) by
utils/utils_config.py; the constants train_v2.py hard-codes (TRAIN_V2); README.md and run.sh
(torchrun --nproc_per_node=8: GPUS); losses.py CombinedMarginLoss.forward and lr_scheduler.py
PolynomialLRWarmup.get_lr, transcribed line by line below.
"""

import json
import math
import shutil

import pytest
import torch

from facelab import CONFIGS
from facelab.cli import _recipe, main
from facelab.config import load_config
from facelab.data.convert import convert
from facelab.heads import Cosines, build_margin
from facelab.train.optim import lr_factor
from facelab.train.task import check_names

# configs/<name>.py, every value the recipes carry (rec, output, resume and dali aside)
PUBLISHED = {
    "ms1mv3_r50": {"margin_list": (1.0, 0.5, 0.0), "network": "r50", "embedding_size": 512,
                   "sample_rate": 1.0, "fp16": True, "momentum": 0.9, "weight_decay": 5e-4,
                   "batch_size": 128, "lr": 0.1, "verbose": 2000, "num_classes": 93431,
                   "num_image": 5179510, "num_epoch": 20, "warmup_epoch": 0},
    "ms1mv3_r100": {"margin_list": (1.0, 0.5, 0.0), "network": "r100", "embedding_size": 512,
                    "sample_rate": 1.0, "fp16": True, "momentum": 0.9, "weight_decay": 5e-4,
                    "batch_size": 128, "lr": 0.1, "verbose": 2000, "num_classes": 93431,
                    "num_image": 5179510, "num_epoch": 20, "warmup_epoch": 0},
    "glint360k_r50": {"margin_list": (1.0, 0.0, 0.4), "network": "r50", "embedding_size": 512,
                      "sample_rate": 1.0, "fp16": True, "momentum": 0.9, "weight_decay": 1e-4,
                      "batch_size": 128, "lr": 0.1, "verbose": 2000, "num_classes": 360232,
                      "num_image": 17091657, "num_epoch": 20, "warmup_epoch": 0},
    "glint360k_r100": {"margin_list": (1.0, 0.0, 0.4), "network": "r100", "embedding_size": 512,
                       "sample_rate": 1.0, "fp16": True, "momentum": 0.9, "weight_decay": 1e-4,
                       "batch_size": 128, "lr": 0.1, "verbose": 2000, "num_classes": 360232,
                       "num_image": 17091657, "num_epoch": 20, "warmup_epoch": 0},
}
BASE = {"optimizer": "sgd", "seed": 2048, "num_workers": 2, "frequent": 10}  # configs/base.py
# train_v2.py: CombinedMarginLoss(64, ...), SGD(momentum=0.9), clip_grad_norm_(..., 5),
# get_model(dropout=0.0), PolynomialLRWarmup(...) with its default power=1.0
TRAIN_V2 = {"s": 64.0, "momentum": 0.9, "clip": 5.0, "dropout": 0.0, "power": 1.0}
GPUS = 8  # README.md "To run on a machine with 8 GPUs", run.sh
NETWORKS = {"r50": "iresnet50", "r100": "iresnet100"}  # backbones/__init__.py get_model


def _cfg(name):
    return load_config(CONFIGS / "insightface" / f"{name}.yaml")


def test_the_four_recipes_are_shipped_validate_and_resolve_in_the_cli():
    shipped = {p.stem for p in (CONFIGS / "insightface").glob("*.yaml")}
    assert shipped == set(PUBLISHED)
    for name in PUBLISHED:
        check_names(_cfg(name))  # backbone, margin and its kwargs (fallback, straight_through)
        assert _recipe(f"insightface/{name}") == CONFIGS / "insightface" / f"{name}.yaml"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_values_are_the_published_ones(name):
    pub, cfg = PUBLISHED[name], _cfg(name)
    total_batch = pub["batch_size"] * GPUS  # train_v2.py cfg.total_batch_size
    per_epoch = pub["num_image"] // total_batch
    assert cfg.data.batch_size == total_batch  # facelab's batch_size is the global batch
    assert cfg.train.steps == per_epoch * pub["num_epoch"]  # train_v2.py cfg.total_step
    assert cfg.schedule.warmup_steps == per_epoch * pub["warmup_epoch"]  # cfg.warmup_step
    assert cfg.train.checkpoint_every == per_epoch  # model.pt after every epoch
    assert cfg.model.backbone == NETWORKS[pub["network"]]
    assert cfg.model.embedding_size == pub["embedding_size"]
    assert cfg.model.kwargs == {"dropout": TRAIN_V2["dropout"], "fc_bn": "insightface"}
    assert cfg.head.sample_rate == pub["sample_rate"]
    assert (cfg.head.kwargs["s"], cfg.head.sub_centers) == (TRAIN_V2["s"], None)
    o = cfg.optim
    assert (o.name, o.lr, o.weight_decay) == (BASE["optimizer"], pub["lr"], pub["weight_decay"])
    assert o.momentum == TRAIN_V2["momentum"] == pub["momentum"] and not o.nesterov
    s = cfg.schedule
    assert (s.name, s.power, s.min_lr) == ("poly", TRAIN_V2["power"], 0.0)
    assert cfg.train.amp == ("fp16" if pub["fp16"] else "none")
    assert cfg.train.clip_grad_norm == TRAIN_V2["clip"]
    assert (cfg.train.eval_every, cfg.train.log_every) == (pub["verbose"], BASE["frequent"])
    assert (cfg.seed, cfg.data.workers, cfg.data.flip) == (BASE["seed"], BASE["num_workers"], True)
    assert cfg.data.train == ""  # the user gives it: no insightface /train_tmp path


def combined_margin_loss(logits, labels, s, m1, m2, m3):
    """losses.py CombinedMarginLoss.forward, interclass filtering off (base.py threshold 0)."""
    index_positive = torch.where(labels != -1)[0]
    target_logit = logits[index_positive, labels[index_positive].view(-1)]
    if m1 == 1.0 and m3 == 0.0:
        with torch.no_grad():
            target_logit.arccos_()
            logits.arccos_()
            final_target_logit = target_logit + m2
            logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
            logits.cos_()
        logits = logits * s
    elif m3 > 0:
        final_target_logit = target_logit - m3
        logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
        logits = logits * s
    else:
        raise ValueError("CombinedMarginLoss raises here")
    return logits


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_head_equals_combined_margin_loss_values_and_gradients(name):
    """Logits and the cross-entropy's gradient, float64, with targets past θ + m2 > π (where a
    th/mm fallback would differ) and near cos = 1."""
    torch.manual_seed(0)
    cos = torch.rand(8, 6, dtype=torch.float64) * 1.8 - 0.9  # [B, C]
    labels = torch.arange(8) % 6
    cos[torch.arange(8), labels] = torch.tensor([-0.97, -0.9, -0.5, 0.0, 0.3, 0.7, 0.95, 0.999],
                                                dtype=torch.float64)
    theirs = cos.clone().requires_grad_(True)
    # partial_fc_v2.py clamps the cosines, then applies the margin and the cross-entropy
    ref = combined_margin_loss(theirs.clamp(-1, 1), labels, TRAIN_V2["s"],
                               *PUBLISHED[name]["margin_list"])
    torch.nn.functional.cross_entropy(ref, labels).backward()
    cfg = _cfg(name)
    ours = cos.clone().requires_grad_(True)
    c = ours.clamp(-1, 1)
    target = c[torch.arange(8), labels]
    logits = build_margin(cfg.head.margin, **cfg.head.kwargs)(
        Cosines(c, labels, target, torch.ones(8, dtype=torch.float64)))
    torch.nn.functional.cross_entropy(logits, labels).backward()
    torch.testing.assert_close(logits, ref.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-12)


def polynomial_lr_warmup(base_lr, warmup_iters, total_iters, power):
    """lr_scheduler.py PolynomialLRWarmup.get_lr as step() applies it: the learning rate of
    optimiser steps 1, 2, ... (last_epoch 0, 1, ...)."""
    lr, out = base_lr, [base_lr]
    for last_epoch in range(1, total_iters):
        if last_epoch <= warmup_iters:
            lr = base_lr * last_epoch / warmup_iters
        else:
            l, w, t = last_epoch, warmup_iters, total_iters
            lr *= ((1.0 - (l - w) / (t - w)) / (1.0 - (l - 1 - w) / (t - w))) ** power
        out.append(lr)
    return out


@pytest.mark.parametrize("name", ["ms1mv3_r50", "glint360k_r50"])
def test_schedule_equals_polynomial_lr_warmup_at_every_step(name):
    pub, cfg = PUBLISHED[name], _cfg(name)
    total = pub["num_image"] // (pub["batch_size"] * GPUS) * pub["num_epoch"]
    warmup = pub["num_image"] // (pub["batch_size"] * GPUS) * pub["warmup_epoch"]
    theirs = polynomial_lr_warmup(pub["lr"], warmup, total, TRAIN_V2["power"])
    steps, lr = cfg.train.steps, cfg.optim.lr
    ours = [lr * lr_factor(k, steps, cfg.schedule, lr) for k in range(steps)]
    assert len(ours) == len(theirs) == total
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-12


SHRINK = ["model.backbone=tiny", "model.kwargs.width=4", "model.embedding_size=16",
          "data.batch_size=8", "data.workers=0", "train.steps=3", "train.device=cpu",
          "train.threads=2", "train.log_every=1", "train.checkpoint_every=3",
          "train.progress=false", "train.tensorboard=false"]


# fp16's GradScaler skips the steps whose gradients overflow (the first ones, at scale 2^16), as
# arcface_torch's does; torch then warns that the scheduler stepped before the optimiser
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_cli_trains_ms1mv3_r50_on_synthetic_recordio(tiny_data, tmp_path):
    """`facelab train insightface/ms1mv3_r50 data.train=<train.rec folder>` with the recipe's
    head, optimiser, schedule, clipping and fp16 kept, the network and batch shrunk."""
    rec = tmp_path / "rec"
    convert(tiny_data / "train", rec, fmt="rec")
    assert (rec / "train.rec").is_file() and (rec / "train.idx").is_file()
    shutil.copy(tiny_data / "val.bin", rec / "lfw.bin")
    out = tmp_path / "run"
    args = ["train", "insightface/ms1mv3_r50", f"data.train={rec}",
            f"data.val_pairs=[{rec / 'lfw.bin'}]", f"output={out}", *SHRINK]
    assert main(args) == 0
    ran = load_config(out / "config.yaml")
    assert ran.head.kwargs == {"s": 64.0, "m": 0.5, "straight_through": True, "fallback": False}
    assert (ran.train.amp, ran.train.clip_grad_norm, ran.schedule.power) == ("fp16", 5.0, 1.0)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss/loss"]) for r in rows)
    # linear decay to 0 over the 3 steps: lr logged after each step's scheduler step
    assert [r["lr"] for r in rows] == pytest.approx([0.1 * (1 - k / 3) for k in (1, 2, 3)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["num_classes"] == 6 and "lfw" in metrics["pairs"]


def test_data_train_is_required(tmp_path, capsys):
    args = ["train", "insightface/glint360k_r50", "train.device=cpu", f"output={tmp_path / 'r'}"]
    assert main(args) == 2
    assert "data.train" in capsys.readouterr().err
