"""Margins that read more than the target cosine (AdaCos, AdaM-Softmax, MV-Softmax, CurricularFace,
Sub-center ArcFace, MagFace, ElasticFace, AdaFace) against float64 loop transcriptions of their
METHODS.md equations: values, gradients (also with respect to the feature norms and the per-class
margins), state updates and regularisers; their degenerate equalities; building and validation.

The references and how they run are in tests/references/margins.py (CONTEXT_REFERENCE); the
margins of the target cosine alone are tested in test_margins.py.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from tests.references.margins import (
    CONTEXT_REFERENCE,
    NUM_CLASSES,
    SIGMAS,
    TARGET_REFERENCE,
    THETAS,
    batch,
    cosines_of,
    elastic_draws,
    reference_run,
    resolved,
    target_curve,
    updated_state,
)

from facelab.errors import FacelabError
from facelab.heads import MARGINS, build_head, build_margin
from facelab.heads.margins import margin_parameters

CASES = [(name, cfg) for name, (_, _, configs) in CONTEXT_REFERENCE.items() for cfg in configs]
# state preset before the batch (the update rule then runs from it in training mode)
PRESET = {"adacos": {"scale": 7.5}, "curricularface": {"t": 0.3}, "adaface": {"mu": 30.0, "sigma": 40.0}}


def inputs(thetas, seed=2):
    cos, labels = batch(thetas)
    g = torch.Generator().manual_seed(seed)
    norms = torch.rand(len(labels), generator=g, dtype=torch.float64) * 140 + 1  # [1, 141]: every clamp
    margins = torch.rand(NUM_CLASSES, generator=g, dtype=torch.float64) * 1.4 - 0.2  # [-0.2, 1.2]
    weights = torch.randn(cos.shape, generator=g, dtype=torch.float64)
    return cos, labels, norms, margins, weights


def build(name, config, training, state=None):
    margin = build_margin(name, **config).double().train(training)
    if state:
        margin.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in state.items()})
    return margin


def module_run(margin, cos, labels, norms, margins, weights, seed=7):
    leaves = [t.clone().requires_grad_(True) for t in (cos, norms, margins)]
    torch.manual_seed(seed)
    c = cosines_of(leaves[0], labels, leaves[1], leaves[2])
    logits = margin(c)
    reg = margin.regularizer(c)
    loss = (logits * weights).sum() + (0.0 if reg is None else reg)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]
    return logits.detach(), None if reg is None else reg.detach(), grads


def compare(name, config, training, thetas=THETAS, preset=True):
    params = resolved(name, config)
    state = dict(PRESET.get(name, {})) if preset else {}
    cos, labels, norms, margins, weights = inputs(thetas)
    margin = build(name, config, training, state)
    logits, reg, grads = module_run(margin, cos, labels, norms, margins, weights)
    tcos = [cos[i, y].item() if y >= 0 else 0.3 for i, y in enumerate(labels.tolist())]
    new_state = updated_state(name, params, state, cos.tolist(), labels.tolist(), tcos, norms.tolist(), training)
    draws = elastic_draws(params, tcos, 7, training) if name.startswith("elasticface") else None
    values, ref_reg, ref_logits, ref_grads = reference_run(
        name, params, new_state, draws, cos, labels, norms, margins, weights
    )
    return SimpleNamespace(
        margin=margin,
        logits=logits,
        reg=reg,
        grads=grads,
        values=values,
        ref_reg=ref_reg,
        ref_logits=ref_logits,
        ref_grads=ref_grads,
        state=new_state,
        cos=cos,
        labels=labels,
    )


def test_every_registry_entry_has_a_reference_in_one_of_the_two_files():
    assert not set(CONTEXT_REFERENCE) & set(TARGET_REFERENCE)
    assert set(CONTEXT_REFERENCE) | set(TARGET_REFERENCE) == set(MARGINS)


@pytest.mark.parametrize("name", sorted(CONTEXT_REFERENCE))
def test_defaults_follow_methods(name):
    defaults = CONTEXT_REFERENCE[name][1]
    assert set(margin_parameters(name)) == set(defaults)
    margin = MARGINS[name]()
    assert margin.name == name and margin.normalized
    for field, value in defaults.items():
        if value is not None:
            assert getattr(margin, field) == value, field


@pytest.mark.parametrize(("name", "plus"), sorted(SIGMAS))
def test_elasticface_default_sigma_per_variant(name, plus):
    assert build_margin(name, plus=plus).sigma == SIGMAS[(name, plus)]
    assert build_margin(name, plus=plus, sigma=0.1).sigma == 0.1


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("name", "config"), CASES)
def test_values_gradients_and_state_match_reference(name, config, training):
    check_against_reference(compare(name, config, training))


def check_against_reference(r):
    """The module run of `compare` equals its two reference runs (values, gradients, state, regulariser)."""
    torch.testing.assert_close(r.ref_logits, r.values, rtol=1e-12, atol=1e-12)  # the two reference runs
    assert all(torch.isfinite(g).all() for g in r.grads)
    for key, value in r.state.items():
        assert getattr(r.margin, key).item() == pytest.approx(value, rel=1e-12), key
    if r.ref_reg is None:
        assert r.reg is None
    else:
        assert r.reg.item() == pytest.approx(r.ref_reg, rel=1e-12)
    # at |cos θ_y| = 1 only the clamp convention decides (see test_margins.py): values to 1e-5, gradients finite
    edge = torch.zeros_like(r.cos, dtype=torch.bool)
    rows = [i for i, y in enumerate(r.labels.tolist()) if y >= 0 and abs(r.cos[i, y]) == 1.0]
    edge[rows, r.labels[rows]] = True
    torch.testing.assert_close(r.logits[edge], r.values[edge], rtol=0, atol=1e-5)
    torch.testing.assert_close(r.logits[~edge], r.values[~edge], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r.grads[0][~edge], r.ref_grads[0][~edge], rtol=1e-9, atol=1e-9)
    inner = torch.ones(len(r.labels), dtype=torch.bool)
    inner[rows] = False
    torch.testing.assert_close(r.grads[1][inner], r.ref_grads[1][inner], rtol=1e-9, atol=1e-9)  # d / d norms
    torch.testing.assert_close(r.grads[2], r.ref_grads[2], rtol=1e-9, atol=1e-9)  # d / d class margins


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("m", [0.35, 0.6])
def test_mv_am_easy_margin_switches_at_cos_m(m, training):
    """Target angles either side of cos θ_y = m (and at |cos θ_y| = 1): margin above, none at or below."""
    switch = math.acos(m)
    thetas = [0.0, switch - 0.05, switch - 1e-4, switch + 1e-4, switch + 0.05, math.pi / 2, math.pi]
    r = compare("mv_am", {"easy_margin": True, "m": m}, training, thetas=thetas)
    check_against_reference(r)
    rows, labels = list(range(len(thetas))), r.labels[: len(thetas)]
    tc, target = r.cos[rows, labels], r.logits[rows, labels]
    assert (tc > m).tolist() == [True, True, True, False, False, False, False]
    torch.testing.assert_close(target, torch.where(tc > m, 32.0 * (tc - m), 32.0 * tc), rtol=1e-12, atol=1e-12)
    cos, labels, norms, margins, _ = inputs(thetas)  # exactly at cos θ_y = m: no margin (strict >)
    cos[0, labels[0]] = m
    logits = build_margin("mv_am", easy_margin=True, m=m).double()(cosines_of(cos, labels, norms, margins))
    assert logits[0, labels[0]].item() == pytest.approx(32.0 * m, rel=1e-12)


@pytest.mark.parametrize(("name", "config"), CASES)
def test_gradients_match_finite_differences(name, config):
    """Eval mode (no state update, mean ElasticFace margin), away from kinks and clamps."""
    cos, labels, norms, margins, _ = inputs([0.2, 0.7, 1.2, 2.0, 2.5, 2.75, 3.0], seed=3)
    norms = norms.clamp(15, 95)  # inside MagFace's [l_a, u_a]
    margins = margins.clamp(0.05, 0.95)  # inside AdaM's [0, 1]
    margin = build(name, config, training=False, state=PRESET.get(name))

    def loss(c, a, m):
        ci = cosines_of(c, labels, a, m)
        reg = margin.regularizer(ci)
        return margin(ci).sum() + (0.0 if reg is None else reg)

    leaves = tuple(t.clone().requires_grad_(True) for t in (cos, norms, margins))
    leaves[1].requires_grad_(name != "adaface")  # AdaFace detaches the norm by design
    assert torch.autograd.gradcheck(loss, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "config"), CASES)
def test_float32_finite_at_abs_cos_one(name, config):
    cos, labels, norms, margins, _ = inputs([0.0, 1e-4, math.pi - 1e-4, math.pi])
    margin = build_margin(name, **config)
    leaves = [t.float().requires_grad_(True) for t in (cos, norms, margins)]
    c = cosines_of(*leaves[:1], labels, leaves[1], leaves[2])
    logits = margin(c)
    reg = margin.regularizer(c)
    (logits.sum() + (0.0 if reg is None else reg)).backward()
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert all(torch.isfinite(t.grad).all() for t in leaves if t.grad is not None)


@pytest.mark.parametrize("name", sorted(CONTEXT_REFERENCE))
def test_input_cosines_are_not_modified(name):
    cos, labels, norms, margins, _ = inputs(THETAS)
    before = [t.clone() for t in (cos, norms, margins)]
    config = {"num_classes": NUM_CLASSES} if name == "adacos" else {}
    build_margin(name, **config).double()(cosines_of(cos, labels, norms, margins))
    assert all(torch.equal(a, b) for a, b in zip((cos, norms, margins), before, strict=True))


# --- degenerate equalities (METHODS.md) ---

THETA_GRID = torch.linspace(0, math.pi, 301, dtype=torch.float64)


def curves_equal(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "base", "m"),
    [("elasticface_arc", "arcface", 0.5), ("elasticface_arc", "arcface", 1.3), ("elasticface_cos", "cosface", 0.35)],
)
@pytest.mark.parametrize("plus", [False, True])
def test_elasticface_without_spread_is_the_base_head(name, base, m, plus):
    elastic = build_margin(name, m=m, sigma=0.0, plus=plus).double().train()
    curves_equal(target_curve(elastic, THETA_GRID), target_curve(build_margin(base, m=m), THETA_GRID))


@pytest.mark.parametrize("m", [0.3, 0.4])
def test_adaface_without_h_is_cosface(m):
    eps = 1e-3  # every cosine is clamped to [-1 + eps, 1 - eps] first, as the official code
    thetas = THETA_GRID[torch.cos(THETA_GRID).abs() <= 1.0 - eps]
    adaface = build_margin("adaface", m=m, h=0.0).double().train()
    curves_equal(target_curve(adaface, thetas), target_curve(build_margin("cosface", m=m), thetas))


def test_subcenter_with_one_centre_is_arcface():
    torch.manual_seed(0)
    sub = build_head("subcenter_arcface", 6, 5, sub_centers=1)
    arc = build_head("arcface", 6, 5)
    arc.load_state_dict(sub.state_dict())
    x, labels = torch.randn(8, 6), torch.randint(0, 5, (8,))
    sub_out = sub.forward_with_logits(x, labels)
    arc_out = arc.forward_with_logits(x, labels)
    torch.testing.assert_close(sub_out.logits, arc_out.logits, rtol=0, atol=0)
    torch.testing.assert_close(sub_out.losses["loss"], arc_out.losses["loss"], rtol=0, atol=0)
    assert torch.equal(sub_out.columns, arc_out.columns)
    curves_equal(
        target_curve(build_margin("subcenter_arcface"), THETA_GRID), target_curve(build_margin("arcface"), THETA_GRID)
    )


@pytest.mark.parametrize("num_classes", [3, 10, 1000, 85742])
def test_adacos_fixed_scale(num_classes):
    head = build_head("adacos", 4, num_classes, mode="fixed")
    assert head.margin.num_classes == num_classes
    assert head.margin.s == pytest.approx(math.sqrt(2) * math.log(num_classes - 1), rel=1e-6)
    assert build_head("adacos", 4, num_classes).margin.s == pytest.approx(
        math.sqrt(2) * math.log(num_classes - 1), rel=1e-6
    )


# --- building the margins ---


def test_adacos_gets_num_classes_from_the_head_builder():
    with pytest.raises(FacelabError, match="num_classes"):
        build_margin("adacos")(cosines_of(*inputs(THETAS)[:4]))
    assert build_head("adacos", 6, 9).margin.num_classes == 9


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("adacos", {"num_classes": 2}, "num_classes"),
        ("adacos", {"num_classes": 5.0}, "num_classes"),
        ("adacos", {"mode": "static"}, "mode"),
        ("adam_softmax", {"lam": -1.0}, "lam"),
        ("mv_am", {"mode": "soft"}, "mode"),
        ("mv_am", {"easy_margin": 1}, "easy_margin"),
        ("mv_arc", {"t": -0.1}, "t"),
        ("mv_arc", {"easy_margin": "yes"}, "easy_margin"),
        ("curricularface", {"m": 2.0}, "m"),
        ("magface", {"u_a": 5.0}, "u_a"),
        ("magface", {"u_m": 0.3}, "u_m"),
        ("elasticface_arc", {"sigma": -0.01}, "sigma"),
        ("elasticface_cos", {"plus": 1}, "plus"),
        ("adaface", {"alpha": 1.5}, "alpha"),
        ("adaface", {"h": -1.0}, "h"),
    ],
)
def test_build_margin_invalid_value(name, kwargs, field):
    with pytest.raises(FacelabError, match=f"'{name}': {field}="):
        build_margin(name, **kwargs)


def test_magface_warns_below_the_theory_bound():
    k = (0.8 - 0.45) / (110 - 10)
    bound = 64 * k * 110**2 * 10**2 / (110**2 - 10**2)
    assert bound == pytest.approx(22.59, abs=0.01)
    with pytest.warns(UserWarning, match="lambda_g"):
        build_margin("magface", lambda_g=22.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_margin("magface", lambda_g=23.0)
