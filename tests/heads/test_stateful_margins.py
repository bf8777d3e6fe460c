"""Margins with per-batch state (AdaCos scale, CurricularFace t, AdaFace μ/σ) and random margins
(ElasticFace): several training steps against a loop transcription of the update rule, eval mode,
state_dict round trips."""

import math

import pytest
import torch
from tests.references.margins import (
    NUM_CLASSES,
    cosines_of,
    reference_run,
    resolved,
    updated_state,
)

from facelab.heads import build_head, build_margin

STATEFUL = {
    "adacos": ({"num_classes": NUM_CLASSES}, {"scale": math.sqrt(2) * math.log(NUM_CLASSES - 1)}),
    "curricularface": ({}, {"t": 0.0}),
    "adaface": ({}, {"mu": 20.0, "sigma": 100.0}),
    "adaface_fast": ({"alpha": 0.3, "h": 1.0}, {"mu": 20.0, "sigma": 100.0}),
}


def random_batch(step, b=10):
    """cos [b, C] in [-1, 1], labels (the last one -1), norms in [1, 60], unused margins. Odd steps put
    the targets at angles in [0.05, 0.7] (a trained model): AdaCos's median target angle is then below π/4."""
    g = torch.Generator().manual_seed(100 + step)
    cos = torch.rand(b, NUM_CLASSES, generator=g, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (b,), generator=g)
    labels[-1] = -1
    if step % 2:
        close = torch.cos(0.05 + 0.65 * torch.rand(b - 1, generator=g, dtype=torch.float64))
        cos[torch.arange(b - 1), labels[:-1]] = close
    norms = torch.rand(b, generator=g, dtype=torch.float64) * 59 + 1
    margins = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    weights = torch.randn(cos.shape, generator=g, dtype=torch.float64)
    return cos, labels, norms, margins, weights


def state_of(margin, state):
    return {k: getattr(margin, k).item() for k in state}


@pytest.mark.parametrize("key", sorted(STATEFUL))
def test_several_training_steps_follow_the_update_rule(key):
    name = key.removesuffix("_fast")
    config, state = STATEFUL[key]
    params = resolved(name, config)
    margin = build_margin(name, **config).double().train()
    assert state_of(margin, state) == pytest.approx(state, rel=1e-7)  # initial values (float32 buffers)
    margin.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in state.items()})
    seen = []
    for step in range(5):
        cos, labels, norms, margins, weights = random_batch(step)
        tcos = [cos[i, y].item() if y >= 0 else 0.3 for i, y in enumerate(labels.tolist())]
        state = updated_state(name, params, state, cos.tolist(), labels.tolist(), tcos, norms.tolist(), True)
        logits = margin(cosines_of(cos, labels, norms, margins))  # updates first, then uses
        assert state_of(margin, state) == pytest.approx(state, rel=1e-12)
        values = reference_run(name, params, state, None, cos, labels, norms, margins, weights)[0]
        torch.testing.assert_close(logits, values, rtol=1e-10, atol=1e-10)
        seen.append(dict(state))
    assert all(seen[i] != seen[i + 1] for i in range(len(seen) - 1))  # the state moves every step

    margin.eval()
    cos, labels, norms, margins, _ = random_batch(99)
    frozen = margin(cosines_of(cos, labels, norms, margins))
    assert state_of(margin, state) == pytest.approx(state, rel=1e-12)  # no update in eval mode
    torch.testing.assert_close(margin(cosines_of(cos, labels, norms, margins)), frozen)


@pytest.mark.parametrize("key", sorted(STATEFUL))
def test_state_dict_round_trip(key):
    name = key.removesuffix("_fast")
    config, state = STATEFUL[key]
    trained = build_margin(name, **config).double().train()
    for step in range(3):
        trained(cosines_of(*random_batch(step)[:4]))
    saved = trained.state_dict()
    assert set(saved) == set(state)
    fresh = build_margin(name, **config).double().train()
    assert state_of(fresh, state) != state_of(trained, state)
    fresh.load_state_dict(saved)
    for step in range(3, 5):  # both continue identically
        c = cosines_of(*random_batch(step)[:4])
        torch.testing.assert_close(fresh(c), trained(c), rtol=0, atol=0)
    assert state_of(fresh, state) == state_of(trained, state)


def test_head_state_dict_keeps_margin_buffers_and_class_margins():
    torch.manual_seed(0)
    head = build_head("curricularface", 6, 5).train()
    head(torch.randn(8, 6), torch.randint(0, 5, (8,)))
    assert "margin.t" in head.state_dict() and head.margin.t.item() != 0.0
    other = build_head("curricularface", 6, 5)
    other.load_state_dict(head.state_dict())
    assert other.margin.t.item() == head.margin.t.item()
    adam = build_head("adam_softmax", 6, 5)
    assert "classifier.class_margins" in adam.state_dict()


def test_stateful_buffer_update_leaves_previous_graph_usable():
    """Two forwards before one backward (gradient accumulation): the buffer update is out of place."""
    for name, config in (("adacos", {"num_classes": NUM_CLASSES}), ("curricularface", {}), ("adaface", {})):
        margin = build_margin(name, **config).double().train()
        cos = random_batch(0)[0].requires_grad_(True)
        _, labels, norms, margins, _ = random_batch(0)
        first = margin(cosines_of(cos, labels, norms, margins)).sum()
        second = margin(cosines_of(cos, labels, norms, margins)).sum()
        (first + second).backward()
        assert torch.isfinite(cos.grad).all()


def test_adaface_batch_of_one_keeps_sigma():
    margin = build_margin("adaface").double().train()
    cos, labels, norms, margins, _ = random_batch(0, b=1)
    labels[0] = 0
    margin(cosines_of(cos, labels, norms, margins))
    assert margin.sigma.item() == 100.0
    assert margin.mu.item() == pytest.approx(0.01 * norms[0].item() + 0.99 * 20.0)


# --- ElasticFace: random margins from torch's global RNG ---


def recovered_margins(name, margin, tcos):
    """The per-sample margins the head used, read back from its target logits (s = 64)."""
    c = cosines_of(tcos[:, None], torch.zeros(len(tcos), dtype=torch.int64), torch.ones_like(tcos), None)
    target = margin(c)[:, 0] / 64.0
    if name == "elasticface_cos":
        return tcos - target
    return torch.acos(target) - torch.acos(tcos)  # θ + m_i < π for these angles: no fallback


@pytest.mark.parametrize("name", ["elasticface_arc", "elasticface_cos"])
@pytest.mark.parametrize("plus", [False, True])
def test_elasticface_margins_are_drawn_every_step(name, plus):
    margin = build_margin(name, plus=plus).double().train()
    angles = 0.2 + torch.rand(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.8
    tcos = torch.cos(angles)  # away from θ = 0, where reading m_i back through acos is ill-conditioned
    torch.manual_seed(1)
    first = recovered_margins(name, margin, tcos)
    second = recovered_margins(name, margin, tcos)
    assert not torch.allclose(first, second)  # a fresh draw each step
    for m in (first, second):
        assert m.mean().item() == pytest.approx(margin.m, abs=4 * margin.sigma / math.sqrt(len(m)))
        assert m.std().item() == pytest.approx(margin.sigma, rel=0.06)
    if plus:  # the smallest margin goes to the highest target cosine
        order = torch.argsort(tcos, descending=True)
        assert (first[order].diff() >= -1e-9).all()
    torch.manual_seed(1)
    torch.testing.assert_close(recovered_margins(name, margin, tcos), first)  # reproducible from the seed
    margin.eval()
    torch.testing.assert_close(recovered_margins(name, margin, tcos), torch.full_like(tcos, margin.m))
