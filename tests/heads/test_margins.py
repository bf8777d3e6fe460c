"""Margins whose target logit is a function of the target cosine alone (softmax, NormFace,
SphereFace, CosFace, ArcFace, combined) against their float64 loop transcriptions: values and
gradients.

The references and how they run are in tests/references/margins.py (TARGET_REFERENCE); the other
margins are tested in test_margins_with_context.py.
"""

import math

import pytest
import torch
from tests.references.margins import (
    TARGET_REFERENCE,
    THETAS,
    TORCH_OPS,
    batch,
    reference_logits,
    target_curve,
)

from facelab.errors import FacelabError
from facelab.heads import MARGINS, Cosines, build_margin
from facelab.heads.margins import margin_parameters

CASES = [(name, config) for name, (_, _, configs) in TARGET_REFERENCE.items() for config in configs]


def cosines(cos, labels):
    """Cosines as a world-size-1 classifier builds them: target_cos gathered from cos (0.3 for label -1)."""
    picked = cos.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    target = torch.where(labels >= 0, picked, torch.full_like(picked, 0.3))
    return Cosines(cos, labels, target, torch.ones_like(picked))


def module_and_reference(name, config, thetas=THETAS):
    params = {**TARGET_REFERENCE[name][1], **config}
    margin = build_margin(name, **config)
    cos, labels = batch(thetas)
    weights = torch.randn(cos.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    leaf = cos.clone().requires_grad_(True)
    logits = margin(cosines(leaf, labels))
    (grad,) = torch.autograd.grad((logits * weights).sum(), leaf)

    values = torch.tensor(reference_logits(name, params, cos.tolist(), labels.tolist(), math), dtype=torch.float64)
    ref_leaf = cos.clone().requires_grad_(True)
    ref_rows = reference_logits(name, params, ref_leaf, labels.tolist(), TORCH_OPS)
    ref_logits = torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in r]) for r in ref_rows])
    (ref_grad,) = torch.autograd.grad((ref_logits * weights).sum(), ref_leaf)
    return logits.detach(), grad, values, ref_logits.detach(), ref_grad


def test_every_reference_is_registered():
    """The other half (every registry entry covered here or in test_margins_with_context.py) is
    tested there."""
    assert set(TARGET_REFERENCE) <= set(MARGINS)


@pytest.mark.parametrize("name", sorted(TARGET_REFERENCE))
def test_defaults_follow_methods(name):
    defaults = TARGET_REFERENCE[name][1]
    assert set(margin_parameters(name)) == set(defaults)
    margin = MARGINS[name]()
    assert margin.name == name
    for field, value in defaults.items():
        assert getattr(margin, field) == value, field
    assert margin.normalized == (name != "softmax")


@pytest.mark.parametrize(("name", "config"), CASES)
def test_values_and_gradients_match_reference(name, config):
    logits, grad, values, ref_logits, ref_grad = module_and_reference(name, config)
    torch.testing.assert_close(ref_logits, values, rtol=1e-12, atol=1e-12)  # the two runs of the reference
    assert torch.isfinite(grad).all()
    # At |cos| = 1 exactly only the clamp convention decides (the reference takes acos(clamp(c)), ArcFace
    # uses the cos/sin expansion): values agree to s·1e-7, gradients need only be finite.
    edge = batch(THETAS)[0].abs() == 1.0
    torch.testing.assert_close(logits[edge], values[edge], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[~edge], values[~edge], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad[~edge], ref_grad[~edge], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("name", "config"), [c for c in CASES if not c[1].get("straight_through")])
def test_gradients_match_finite_differences(name, config):
    margin = build_margin(name, **config)
    interior = [0.2, 0.7, 1.2, 2.0, 2.5, 2.75, 3.0]  # away from kinks, clamps and the easy_margin switch
    cos, labels = batch(interior)

    def logits(c):
        return margin(cosines(c, labels))

    assert torch.autograd.gradcheck(logits, (cos.requires_grad_(True),), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "config"), CASES)
def test_float32_finite_at_abs_cos_one(name, config):
    margin = build_margin(name, **config)
    cos, labels = batch([0.0, 1e-4, math.pi - 1e-4, math.pi], dtype=torch.float32)
    leaf = cos.clone().requires_grad_(True)
    logits = margin(cosines(leaf, labels))
    logits.sum().backward()
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("name", sorted(TARGET_REFERENCE))
def test_rows_without_local_target_untouched_and_input_kept(name):
    cos, labels = batch(THETAS)
    before = cos.clone()
    logits = build_margin(name)(cosines(cos, labels))
    scale = 1.0 if name == "softmax" else 64.0
    torch.testing.assert_close(logits[-1], scale * cos[-1], rtol=0, atol=0)
    assert torch.equal(cos, before)
    non_target = torch.ones_like(cos, dtype=torch.bool)
    non_target[torch.arange(len(THETAS)), labels[:-1]] = False
    torch.testing.assert_close(logits[non_target], scale * cos[non_target], rtol=0, atol=0)


@pytest.mark.parametrize("m", [0.2, 0.35, 0.5])
def test_combined_without_angular_margin_is_cosface(m):
    thetas = torch.linspace(0, math.pi, 301, dtype=torch.float64)
    a = target_curve(build_margin("combined", m1=1.0, m2=0.0, m3=m), thetas)
    b = target_curve(build_margin("cosface", m=m), thetas)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [0.3, 0.5, 1.2])
def test_combined_without_cosine_margin_is_arcface(m):
    thetas = torch.linspace(0, math.pi, 301, dtype=torch.float64)  # covers the fallback region too
    a = target_curve(build_margin("combined", m1=1.0, m2=m, m3=0.0), thetas)
    b = target_curve(build_margin("arcface", m=m), thetas)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m1", [1.0, 1.35, 2.5, 4.0])
def test_sphereface_psi_monotone_decreasing(m1):
    thetas = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    logit, _ = target_curve(build_margin("sphereface", m1=m1, s=1.0), thetas)
    assert (logit.diff() < 0).all()
    assert logit[0] == pytest.approx(1.0, abs=1e-5)
    k = math.ceil(m1) - 1  # piece holding theta = pi; psi(pi) = (-1)^k cos(m1 pi) - 2k
    psi_pi = (-1) ** k * math.cos(m1 * math.pi) - 2 * k
    assert logit[-1] == pytest.approx(psi_pi, abs=m1 * 5e-4)  # theta = pi is clamped to pi - 4.5e-4


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("arcface", {}),
        ("arcface", {"m": 1.5}),
        ("combined", {}),
        ("combined", {"m1": 1.35}),
        ("combined", {"m1": 2.0, "m2": 0.5}),
        ("combined", {"m1": 4.0, "m2": 0.0, "m3": 0.0}),
    ],
)
def test_fallback_keeps_logit_monotone(name, config):
    thetas = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    logit, grad = target_curve(build_margin(name, **config), thetas)
    assert (logit.diff() <= 0).all()
    assert (grad >= 0).all() and torch.isfinite(grad).all()


def test_arcface_fallback_branch():
    m, s = 0.5, 64.0
    thetas = torch.tensor([2.0, math.pi - m - 0.01, math.pi - m + 0.01, 3.0], dtype=torch.float64)
    logit, grad = target_curve(build_margin("arcface", m=m, s=s), thetas)
    c = torch.cos(thetas)
    expected = [math.cos(2.0 + m), math.cos(math.pi - 0.01), c[2] - m * math.sin(m), c[3] - m * math.sin(m)]
    torch.testing.assert_close(logit, s * torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(grad[2:], torch.full((2,), s, dtype=torch.float64))  # fallback is linear in cos


def test_arcface_easy_margin():
    m, s = 0.5, 64.0
    thetas = torch.tensor([0.3, 1.0, 2.0, 3.0], dtype=torch.float64)
    logit, grad = target_curve(build_margin("arcface", m=m, s=s, easy_margin=True), thetas)
    expected = [math.cos(0.3 + m), math.cos(1.0 + m), math.cos(2.0), math.cos(3.0)]  # no margin where cos <= 0
    torch.testing.assert_close(logit, s * torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(grad[2:], torch.full((2,), s, dtype=torch.float64))


def test_arcface_straight_through_values_of_arcface_gradients_of_normface():
    thetas = torch.linspace(0, math.pi, 101, dtype=torch.float64)
    st_logit, st_grad = target_curve(build_margin("arcface", s=32.0, straight_through=True), thetas)
    arc_logit, arc_grad = target_curve(build_margin("arcface", s=32.0), thetas)
    _, norm_grad = target_curve(build_margin("normface", s=32.0), thetas)
    inner = slice(1, -1)  # |cos θ| = 1 exactly at both ends: only the clamp convention differs
    torch.testing.assert_close(st_logit[inner], arc_logit[inner], rtol=1e-12, atol=1e-12)
    # θ = 0: the straight-through value is exact (acos(1) = 0), the clamped one within
    # s·sqrt(2e-7)·sin m
    assert st_logit[0].item() == pytest.approx(32.0 * math.cos(0.5), abs=1e-12)
    assert abs(arc_logit[0].item() - st_logit[0].item()) < 32.0 * math.sqrt(2e-7) * math.sin(0.5)
    torch.testing.assert_close(st_grad, norm_grad, rtol=0, atol=0)
    torch.testing.assert_close(st_grad, torch.full_like(st_grad, 32.0))
    assert not torch.allclose(arc_grad, norm_grad)


def test_build_margin_unknown_name_lists_choices():
    with pytest.raises(FacelabError) as err:
        build_margin("arcfase")
    assert "arcfase" in str(err.value)
    assert all(name in str(err.value) for name in MARGINS)


def test_build_margin_unknown_parameter_lists_parameters():
    with pytest.raises(FacelabError) as err:
        build_margin("arcface", margin=0.5)
    assert "'margin'" in str(err.value)
    assert all(p in str(err.value) for p in ("s", "m", "easy_margin", "straight_through"))


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("normface", {"s": 0.0}, "s"),
        ("cosface", {"s": -1.0}, "s"),
        ("cosface", {"m": -0.1}, "m"),
        ("arcface", {"m": "0.5"}, "m"),
        ("arcface", {"m": 2.0}, "m"),
        ("arcface", {"easy_margin": 1}, "easy_margin"),
        ("arcface", {"s": float("nan")}, "s"),
        ("arcface", {"s": True}, "s"),
        ("sphereface", {"m1": 0.5}, "m1"),
        ("combined", {"m2": -0.3}, "m2"),
        ("combined", {"m3": -0.2}, "m3"),
    ],
)
def test_build_margin_invalid_value(name, kwargs, field):
    with pytest.raises(FacelabError, match=f"'{name}': {field}="):
        build_margin(name, **kwargs)
