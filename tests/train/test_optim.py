import math

import pytest
import torch

from facelab.config import OptimConfig, ScheduleConfig
from facelab.data.samplers import EpochBatchSampler
from facelab.errors import FacelabError
from facelab.train.optim import build_optimizer, lr_factor


def test_schedules_against_formulas():
    total = 100
    poly = ScheduleConfig(name="poly", warmup_steps=10, power=2.0)
    cos = ScheduleConfig(name="cosine", warmup_steps=10, min_lr=0.01)
    assert lr_factor(0, total, poly, 0.1) == pytest.approx(0.1)  # first warm-up step
    assert lr_factor(9, total, poly, 0.1) == pytest.approx(1.0)
    for s in (10, 40, 99, 100):
        p = (s - 10) / 90
        assert lr_factor(s, total, poly, 0.1) == pytest.approx((1 - p) ** 2)
        want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))  # floor min_lr/base = 0.1
        assert lr_factor(s, total, cos, 0.1) == pytest.approx(want)
    assert lr_factor(50, total, ScheduleConfig(name="constant"), 0.1) == 1.0
    with pytest.raises(FacelabError, match="schedule.name"):
        lr_factor(0, total, ScheduleConfig(name="step"), 0.1)


def test_no_weight_decay_on_1d_params():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.PReLU())
    opt = build_optimizer(OptimConfig(name="sgd", weight_decay=0.1), model)
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    assert isinstance(build_optimizer(OptimConfig(name="adamw", lr=1e-3), model), torch.optim.AdamW)
    with pytest.raises(FacelabError, match="optim.name"):
        build_optimizer(OptimConfig(name="lamb"), model)


def test_sampler_resumes_mid_epoch_and_covers_each_index_once():
    s = EpochBatchSampler(50, 8, seed=3)
    s.set_position(2)
    full = list(s)
    assert len(full) == 6 and len({i for b in full for i, _ in b}) == 48
    s.set_position(2, 4)
    assert list(s) == full[4:]
    s.set_position(3)
    assert list(s) != full  # another epoch, another order
    assert not any(f for b in EpochBatchSampler(16, 4, 0, flip=False) for _, f in b)
