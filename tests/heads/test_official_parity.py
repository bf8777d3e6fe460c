"""Switches that reproduce the official implementations, each against a float64 transcription of
that code's behaviour written from its description (README, "facelab vs insightface"):

- insightface's arcface_torch `ArcFace` / `CombinedMarginLoss(s, 1, m, 0)`: under no_grad it takes
  acos of every logit, adds m to the target's, takes cos (no θ + m > π fallback), then scales by
  s outside no_grad: the value is s·cos(acos(cos θ_y) + m), the gradient s for every entry;
- its `CombinedMarginLoss` with m3 > 0: s·(cos θ_y - m3) with the exact gradient, m1 and m2 unused;
- AdaM-Softmax (FaceX-Zoo): the stored margins are clamped to [0, 1] after the step, so a margin
  past a bound gets a gradient and comes back.
"""

import math

import pytest
import torch
from tests.references.margins import THETAS, batch
from tests.references.tiny_runs import make_identity_folder, recipe

from facelab.config import config_from_dict
from facelab.heads import Cosines, build_head, build_margin
from facelab.model import load_checkpoint
from facelab.train.loop import train

S, M = 64.0, 0.5


def insightface_arcface(cos: list[list[float]], labels: list[int], s: float, m: float):
    """(logits, d logits / d cos) of arcface_torch's ArcFace, loop by loop: values from acos/cos in
    float64 for every entry, the margin added to the target's angle only; every entry's derivative
    is s (the edits happen under no_grad, the graph is `logits * s`)."""
    values, grads = [], []
    for row, y in zip(cos, labels, strict=True):
        out = []
        for j, c in enumerate(row):
            theta = math.acos(c)
            out.append(s * math.cos(theta + m if j == y else theta))
        values.append(out)
        grads.append([s] * len(row))
    return values, grads


def insightface_cosface_branch(cos: list[list[float]], labels: list[int], s: float, m3: float):
    """arcface_torch's CombinedMarginLoss with m3 > 0 (whatever m1, m2): target s·(cos θ_y - m3),
    others s·cos θ_j, the exact gradient s."""
    values = [[s * (c - m3 if j == y else c) for j, c in enumerate(row)]
              for row, y in zip(cos, labels, strict=True)]
    return values, [[s] * len(row) for row in cos]


def cosines(cos: torch.Tensor, labels: torch.Tensor) -> Cosines:
    target = cos.gather(1, labels[:, None]).squeeze(1)
    return Cosines(cos, labels, target, torch.ones_like(target))


def logits_and_grad(margin, cos: torch.Tensor, labels: torch.Tensor):
    leaf = cos.clone().requires_grad_(True)
    logits = margin(cosines(leaf, labels))
    (grad,) = torch.autograd.grad(logits.sum(), leaf)  # d Σ logits / d cos: per entry
    return logits.detach(), grad


def every_angle():
    """cos [14, 5] float64 with target angles over [0, π] (exactly 0 and π, both sides of
    π - m), labels [14]."""
    cos, labels = batch(THETAS)
    return cos[:-1], labels[:-1]  # batch()'s last row has label -1 (no local target)


@pytest.mark.parametrize("m", [0.5, 0.3, 1.2])
def test_arcface_straight_through_without_fallback_is_insightface(m):
    cos, labels = every_angle()
    values, grads = insightface_arcface(cos.tolist(), labels.tolist(), S, m)
    for margin in (build_margin("arcface", s=S, m=m, straight_through=True, fallback=False),
                   build_margin("combined", s=S, m1=1.0, m2=m, m3=0.0, fallback=False)):
        if margin.name == "combined":  # combined has the exact gradient: compare values only
            logits, _ = logits_and_grad(margin, cos, labels)
            inner = cos.abs() < 1.0  # the exact-gradient head clamps at |cos| = 1
            want = torch.tensor(values, dtype=torch.float64)
            torch.testing.assert_close(logits[inner], want[inner], rtol=0, atol=1e-12)
            continue
        logits, grad = logits_and_grad(margin, cos, labels)
        torch.testing.assert_close(logits, torch.tensor(values, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(grad, torch.tensor(grads, dtype=torch.float64),
                                   rtol=0, atol=1e-12)


def test_default_arcface_differs_from_insightface_past_pi_only():
    """The fallback is the only difference of the values: where θ_y + m > π facelab's default is
    cos θ_y - m·sin m (monotone), insightface's cos(θ_y + m) turns back up (23.2 apart at θ = π,
    s = 64)."""
    cos, labels = every_angle()
    values = torch.tensor(insightface_arcface(cos.tolist(), labels.tolist(), S, M)[0],
                          dtype=torch.float64)
    logits, _ = logits_and_grad(build_margin("arcface", s=S, m=M, straight_through=True), cos,
                                labels)
    gap = (logits - values).abs()
    target = torch.zeros_like(cos, dtype=torch.bool)
    target[torch.arange(len(labels)), labels] = True
    past = target & (cos <= math.cos(math.pi - M))
    assert past.any() and (gap[past] > 1.0).all()
    assert gap[~past].max() < 1e-12
    worst = S * (math.cos(math.pi + M) - (-1.0 - M * math.sin(M)))
    assert gap.max().item() == pytest.approx(worst, rel=1e-9)


def test_insightface_combined_with_m3_is_cosface_and_facelab_keeps_m2():
    cos, labels = every_angle()
    values, grads = insightface_cosface_branch(cos.tolist(), labels.tolist(), S, 0.2)
    logits, grad = logits_and_grad(build_margin("cosface", s=S, m=0.2), cos, labels)
    torch.testing.assert_close(logits, torch.tensor(values, dtype=torch.float64), rtol=0,
                               atol=1e-12)
    torch.testing.assert_close(grad, torch.tensor(grads, dtype=torch.float64), rtol=0, atol=1e-12)
    ours, _ = logits_and_grad(build_margin("combined", s=S, m1=1.0, m2=0.3, m3=0.2), cos, labels)
    inner = (cos.abs() < 0.99) & (cos > math.cos(math.pi - 0.3))
    target = torch.zeros_like(inner)
    target[torch.arange(len(labels)), labels] = True
    assert ((ours - logits).abs()[inner & target] > 1e-3).all()  # m2 = 0.3 is honoured


def adam_head(lam: float, stored: list[float]):
    torch.manual_seed(0)
    head = build_head("adam_softmax", 6, 5, lam=lam).double()
    with torch.no_grad():
        head.classifier.class_margins.copy_(torch.tensor(stored, dtype=torch.float64))
    return head


def test_adam_margin_past_a_bound_gets_a_gradient_and_returns():
    """A stored margin of 1.02 (past the upper bound): the forward uses it as stored and gives it a
    gradient; the step moves it, then after_step clamps it to 1, and the cross-entropy (which wants
    smaller margins; λ small) takes it back below 1 within a few SGD steps."""
    head = adam_head(lam=0.1, stored=[1.02, 0.35, 0.35, 0.35, -0.05])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(40) % 5
    opt = torch.optim.SGD(head.parameters(), lr=0.01)
    history = []
    for step in range(6):
        opt.zero_grad()
        head(x, labels)["loss"].backward()
        if step == 0:
            grad = head.classifier.class_margins.grad
            assert grad[0] > 0 and grad[4] > 0  # both out-of-bound margins are pushed
        opt.step()
        head.after_step()
        history.append(head.classifier.class_margins.detach().clone())
    first, last = history[0], history[-1]
    assert ((first >= 0.0) & (first <= 1.0)).all()
    assert last[0] < 1.0 - 1e-3  # came back from the upper bound
    assert last[4] == 0.0  # the lower bound holds while the loss pushes it down


def test_adam_forward_uses_the_stored_margins_as_they_are():
    head = adam_head(lam=70.0, stored=[0.2, 0.4, 0.6, 0.8, 1.0])
    x, labels = torch.randn(8, 6, dtype=torch.float64), torch.arange(8) % 5
    c = head.classifier(x, labels)
    logits = head.margin(c)
    m = [0.2, 0.4, 0.6, 0.8, 1.0]
    for i, y in enumerate(labels.tolist()):
        assert logits[i, y].item() == pytest.approx(32.0 * (c.cos[i, y].item() - m[y]), abs=1e-12)
    assert head.margin.regularizer(c).item() == pytest.approx(70.0 * (1 - sum(m) / 5), abs=1e-12)


def test_training_loop_keeps_adam_margins_in_bounds(tmp_path):
    """A regulariser weight so large that one SGD step pushes every margin far past 1: the loop's
    after_step clamps them back, so the checkpoint holds margins in [0, 1] with some at 1."""
    folder = make_identity_folder(tmp_path / "train")
    extra = {"head": {"margin": "adam_softmax", "kwargs": {"lam": 1.0e4}}}
    train(config_from_dict(recipe(folder, tmp_path / "run", steps=2, extra=extra)))
    margins = load_checkpoint(tmp_path / "run")["head"]["classifier.class_margins"]
    assert ((margins >= 0.0) & (margins <= 1.0)).all()
    assert (margins == 1.0).any()
