"""DAIL dataset invariance: gradient reversal, the two stages, the λ schedule; a tiny multi-dataset run."""

import math

import pytest
import torch

from facelab.losses.dail import DatasetInvariance, grad_reverse, grl_lambda

OFFSETS = [0, 4, 9]


def test_grl_is_identity_forward_and_minus_lambda_backward():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    y = grad_reverse(x, 0.7)
    torch.testing.assert_close(y, x)
    jac = torch.autograd.functional.jacobian(lambda t: grad_reverse(t, 0.7), x)  # [3, 5, 3, 5]
    torch.testing.assert_close(jac.reshape(15, 15), -0.7 * torch.eye(15, dtype=torch.float64))
    w = torch.randn(3, 5, dtype=torch.float64)
    (g,) = torch.autograd.grad((grad_reverse(x, 2.0) * w).sum(), x)
    torch.testing.assert_close(g, -2.0 * w)


def test_lambda_schedule():
    assert grl_lambda(50, 1.0, 100, start=100) == 0.0
    assert grl_lambda(100, 1.0, 100, start=100) == 0.0  # p = 0
    assert grl_lambda(150, 1.0, 100, start=100) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_lambda(10_000, 0.5, 100, start=100) == pytest.approx(0.5 * (2 / (1 + math.exp(-10)) - 1))
    assert grl_lambda(3, 0.5, 0) == 0.5  # no warm-up: λ itself, not the ramp's 0.99991·λ
    assert grl_lambda(3, 0.5, 0, start=4) == 0.0


def grads(step, adversarial_from):
    torch.manual_seed(0)
    backbone = torch.nn.Linear(6, 4)
    objective = DatasetInvariance(4, OFFSETS, weight=1.0, lam=1.0, warmup=10, adversarial_from=adversarial_from)
    objective.step = step
    labels = torch.tensor([0, 3, 5, 8])
    emb = backbone(torch.randn(4, 6))
    loss = objective(emb, labels)["dataset_ce"]
    loss.backward()
    return backbone.weight.grad, objective.classifier[0].weight.grad, emb, objective, labels


def test_stage_one_leaves_backbone_grads_at_zero():
    g_backbone, g_cls, *_ = grads(step=5, adversarial_from=20)
    assert g_backbone is None or torch.count_nonzero(g_backbone) == 0
    assert torch.count_nonzero(g_cls) > 0  # the dataset classifier itself learns


def test_stage_two_sends_the_reversed_gradient():
    g_rev, _, emb, objective, labels = grads(step=25, adversarial_from=20)
    lam = grl_lambda(25, 1.0, 10, 20)
    emb2 = emb.detach().requires_grad_()
    logits = objective.classifier(emb2)
    plain = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1, 1]))
    (g_emb,) = torch.autograd.grad(plain, emb2)
    g_emb_rev = torch.autograd.grad(objective(emb2, labels)["dataset_ce"], emb2)[0]
    torch.testing.assert_close(g_emb_rev, -lam * g_emb)
    assert torch.count_nonzero(g_rev) > 0
