import copy
import math

import pytest
import torch

from facelab.config import OptimConfig, ScheduleConfig
from facelab.data.samplers import EpochBatchSampler
from facelab.errors import FacelabError
from facelab.train.optim import build_optimizer, lr_factor, param_groups


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


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_is_fused_and_steps_as_the_formula_and_the_default_sgd(nesterov):
    """The fused SGD facelab builds: the update by hand (grad + wd·p, momentum buffer, Nesterov) in float64, and
    the default (unfused) torch SGD to float32 rounding (equal to the bit on large tensors; tensors shorter than
    the vector width take a scalar path that rounds differently), over three steps with both parameter groups."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.PReLU())
    cfg = OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    runs = {}
    for name, dtype in (("fused", torch.float64), ("fused32", torch.float32), ("default32", torch.float32)):
        net = copy.deepcopy(model).to(dtype)
        opt = build_optimizer(cfg, net)
        if name == "default32":
            opt = torch.optim.SGD(param_groups(net, 0.01), lr=0.1, momentum=0.9, nesterov=nesterov)  # same groups
        assert bool(opt.defaults["fused"]) == (name != "default32")
        g = torch.Generator().manual_seed(1)
        grads = [[torch.randn(p.shape, generator=g, dtype=dtype) for p in net.parameters()] for _ in range(3)]
        for step in grads:
            for p, grad in zip(net.parameters(), step, strict=True):
                p.grad = grad.clone()
            opt.step()
        runs[name] = ([p.detach().clone() for p in net.parameters()], grads)
    ref = [p.detach().double().clone() for p in model.parameters()]
    bufs = [None] * len(ref)
    for step in runs["fused"][1]:
        for i, (p, grad) in enumerate(zip(ref, step, strict=True)):
            d = grad + (0.01 if p.ndim > 1 else 0.0) * p  # no weight decay on 1-D parameters
            bufs[i] = d.clone() if bufs[i] is None else 0.9 * bufs[i] + d
            p -= 0.1 * (d + 0.9 * bufs[i] if nesterov else bufs[i])
    for got, want in zip(runs["fused"][0], ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(runs["fused32"][0], runs["default32"][0], strict=True):  # float32 rounding apart at most
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


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
