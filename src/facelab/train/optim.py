"""Optimisers and learning-rate schedules."""

import math

import torch
from torch import nn

from facelab.config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and conv kernels only; none on biases, BN and PReLU (1-D).
    Parameters that do not require grad (train.freeze, the insightface embedding BN's weight) are
    left out, so neither a step, momentum nor weight decay moves them."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total: int, cfg: ScheduleConfig, base_lr: float) -> float:
    """Multiplier of the base rate at `step` (0-based): linear warm-up, then
    constant / poly / cosine decay from the base rate to `min_lr` at `total`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.name == "poly":
        shape = (1 - progress) ** cfg.power
    else:
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    return floor + (1 - floor) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg, base_lr)
    )
