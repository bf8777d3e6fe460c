"""Second-wave margins against float64 loop transcriptions of their METHODS.md equations.

As in test_margins.py, a reference is written once and run twice: with python floats and `math` for the
values, with 0-d float64 tensors and `TORCH_OPS` for the gradients (here also with respect to the feature
norms and the per-class margins). A reference works on one row: `ref(row, y, tc, ctx, ops, **params)`
returns the C logits of a sample whose cosines are `row`, label `y` (-1: target on another rank) and
target cosine `tc`; `ctx` holds its norm, the per-class margins, the head's state after this batch's
update and its ElasticFace margin. State updates and ElasticFace draws are transcribed separately,
once per batch, with python loops.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from test_margins import REFERENCE as WAVE1_REFERENCE
from test_margins import THETAS, TORCH_OPS, batch, clamp, ref_arcface, target_curve

from facelab.errors import FacelabError
from facelab.heads import MARGINS, Classifier, Cosines, FaceHead, build_head, build_margin
from facelab.heads.margins import margin_parameters

NUM_CLASSES = 5  # columns of `batch`


def arc(c, m, ops, easy_margin=False):
    """ArcFace target cos(θ + m) with the th/mm fallback, or easy margin; m a float or a 0-d tensor."""
    theta = ops.acos(clamp(c))
    if easy_margin:
        return ops.cos(theta + m) if c > 0 else c
    if theta + m <= math.pi:
        return ops.cos(theta + m)
    return c - m * ops.sin(m)


def with_target(row, y, target, other):
    return [target if j == y else other(row[j]) for j in range(len(row))]


def ref_adacos(row, y, tc, ctx, ops, num_classes, mode):
    s = ctx.state["scale"]
    return [s * c for c in row]


def ref_adam_softmax(row, y, tc, ctx, ops, s, lam):
    m_y = min(max(ctx.margins[y], 0.0), 1.0) if y >= 0 else None
    return with_target(row, y, s * (tc - m_y) if y >= 0 else None, lambda c: s * c)


def ref_mv(row, y, tc, ops, s, t, mode, f, target):
    def other(c):
        if c > f:  # mis-classified vector
            return s * ((t + 1) * c + t) if mode == "adaptive" else s * (c + t)
        return s * c

    return with_target(row, y, s * target, other)


def ref_mv_am(row, y, tc, ctx, ops, s, m, t, mode, easy_margin):
    target = tc if easy_margin and not tc > m else tc - m  # easy margin: only where cos θ_y > m (original code)
    return ref_mv(row, y, tc, ops, s, t, mode, f=tc - m, target=target)  # the mask keeps cos θ_y - m


def ref_mv_arc(row, y, tc, ctx, ops, s, m, t, mode, easy_margin):
    f = ops.cos(ops.acos(clamp(tc)) + m)  # margined target before the fallback / easy-margin switch
    return ref_mv(row, y, tc, ops, s, t, mode, f=f, target=arc(tc, m, ops, easy_margin))


def ref_curricularface(row, y, tc, ctx, ops, s, m):
    t = ctx.state["t"]
    f = ops.cos(ops.acos(clamp(tc)) + m)  # hard-negative threshold, before the fallback
    return with_target(row, y, s * arc(tc, m, ops), lambda c: s * c * (t + c) if c > f else s * c)


def ref_subcenter_arcface(row, y, tc, ctx, ops, s, m, easy_margin, straight_through):
    target = ref_arcface(tc, ops, s, m, easy_margin, straight_through)
    return with_target(row, y, target, lambda c: s * c)


def ref_magface(row, y, tc, ctx, ops, s, l_a, u_a, l_m, u_m, lambda_g, easy_margin):
    a = min(max(ctx.norm, l_a), u_a)
    m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
    return with_target(row, y, s * arc(tc, m, ops, easy_margin), lambda c: s * c)


def ref_elasticface_arc(row, y, tc, ctx, ops, s, m, sigma, plus):
    return with_target(row, y, s * arc(tc, ctx.draw, ops), lambda c: s * c)


def ref_elasticface_cos(row, y, tc, ctx, ops, s, m, sigma, plus):
    return with_target(row, y, s * (tc - ctx.draw), lambda c: s * c)


def ref_adaface(row, y, tc, ctx, ops, s, m, h, alpha, eps):
    norm = ctx.norm.item() if isinstance(ctx.norm, torch.Tensor) else ctx.norm  # detached
    a = min(max(norm, 0.001), 100.0)  # clipped as the official code
    z = min(max(h * (a - ctx.state["mu"]) / (ctx.state["sigma"] + eps), -1.0), 1.0)
    theta = min(max(ops.acos(clamp(tc)) - m * z, eps), math.pi - eps)
    return with_target(row, y, s * (ops.cos(theta) - (m + m * z)), lambda c: s * c)


def reg_adam_softmax(norms, margins, s, lam):
    ms = [min(max(margins[k], 0.0), 1.0) for k in range(len(margins))]
    return lam * (1 - sum(ms) / len(ms))


def reg_magface(norms, margins, s, l_a, u_a, l_m, u_m, lambda_g, easy_margin):
    a = [min(max(norms[i], l_a), u_a) for i in range(len(norms))]
    return lambda_g * sum(1 / v + v / u_a**2 for v in a) / len(a)


REGULARISERS = {"adam_softmax": reg_adam_softmax, "magface": reg_magface}

ARC = {"s": 64.0, "m": 0.5, "easy_margin": False, "straight_through": False}
MAG = {"s": 64.0, "l_a": 10.0, "u_a": 110.0, "l_m": 0.45, "u_m": 0.8, "lambda_g": 35.0, "easy_margin": True}
# name -> (row reference, METHODS.md defaults (None: resolved by the head, tested apart), configurations)
REFERENCE = {
    "adacos": (
        ref_adacos,
        {"num_classes": None, "mode": "dynamic"},
        [{"num_classes": 5}, {"num_classes": 5, "mode": "fixed"}, {"num_classes": 1000}],
    ),
    "adam_softmax": (ref_adam_softmax, {"s": 32.0, "lam": 70.0}, [{}, {"s": 16.0, "lam": 1.5}]),
    "mv_am": (
        ref_mv_am,
        {"s": 32.0, "m": 0.35, "t": 0.2, "mode": "adaptive", "easy_margin": False},
        [{}, {"mode": "fixed"}, {"s": 16.0, "m": 0.2, "t": 0.5}, {"easy_margin": True},
         {"easy_margin": True, "m": 0.6, "mode": "fixed"}],
    ),
    "mv_arc": (
        ref_mv_arc,
        {"s": 32.0, "m": 0.5, "t": 0.2, "mode": "adaptive", "easy_margin": False},
        [{}, {"mode": "fixed"}, {"easy_margin": True}, {"m": 1.2, "t": 0.4}],
    ),
    "curricularface": (ref_curricularface, {"s": 64.0, "m": 0.5}, [{}, {"s": 30.0, "m": 1.0}]),
    "subcenter_arcface": (ref_subcenter_arcface, ARC, [{}, {"m": 0.3, "s": 30.0}, {"easy_margin": True}]),
    "magface": (ref_magface, MAG, [{}, {"easy_margin": False}, {"u_m": 1.5, "lambda_g": 70.0, "easy_margin": False}]),
    "elasticface_arc": (
        ref_elasticface_arc,
        {"s": 64.0, "m": 0.5, "sigma": None, "plus": False},
        [{}, {"plus": True}, {"sigma": 0.3, "plus": True}, {"sigma": 0.3}, {"sigma": 0.0}],
    ),
    "elasticface_cos": (
        ref_elasticface_cos,
        {"s": 64.0, "m": 0.35, "sigma": None, "plus": False},
        [{}, {"plus": True}, {"sigma": 0.2, "plus": True}],
    ),
    "adaface": (
        ref_adaface,
        {"s": 64.0, "m": 0.4, "h": 0.333, "alpha": 0.01, "eps": 1e-3},
        [{}, {"h": 1.0, "m": 0.5}, {"h": 0.0}, {"alpha": 0.5, "eps": 0.01}],
    ),
}
CASES = [(name, config) for name, (_, _, configs) in REFERENCE.items() for config in configs]
SIGMAS = {("elasticface_arc", False): 0.05, ("elasticface_arc", True): 0.0175}
SIGMAS.update({("elasticface_cos", False): 0.05, ("elasticface_cos", True): 0.02})
# state preset before the batch (the update rule then runs from it in training mode)
PRESET = {"adacos": {"scale": 7.5}, "curricularface": {"t": 0.3}, "adaface": {"mu": 30.0, "sigma": 40.0}}


def resolved(name, config):
    """METHODS.md defaults updated with config; ElasticFace's σ = None becomes the paper's σ."""
    params = {**REFERENCE[name][1], **config}
    if name.startswith("elasticface") and params["sigma"] is None:
        params["sigma"] = SIGMAS[(name, params["plus"])]
    return params


def updated_state(name, params, state, cos, labels, tcos, norms, training):
    """The state after one batch (python floats, loops); unchanged in eval mode."""
    if not training:
        return dict(state)
    if name == "adacos" and params["mode"] == "dynamic":
        s = state["scale"]
        total = sum(math.exp(s * cos[i][k]) for i in range(len(labels)) for k in range(NUM_CLASSES) if k != labels[i])
        med = sorted(math.acos(clamp(c)) for c in tcos)[(len(tcos) - 1) // 2]  # the lower median
        return {"scale": math.log(total / len(labels)) / math.cos(min(math.pi / 4, med))}
    if name == "curricularface":
        return {"t": 0.01 * sum(tcos) / len(tcos) + 0.99 * state["t"]}
    if name == "adaface":
        a = [min(max(v, 0.001), 100.0) for v in norms]
        mean = sum(a) / len(a)
        std = math.sqrt(sum((v - mean) ** 2 for v in a) / (len(a) - 1))
        p = params["alpha"]
        return {"mu": p * mean + (1 - p) * state["mu"], "sigma": p * std + (1 - p) * state["sigma"]}
    return dict(state)


def elastic_draws(params, tcos, seed, training):
    """Per-sample ElasticFace margins: m + σ·randn(B) after torch.manual_seed(seed); plus: by rank."""
    if not training:
        return [params["m"]] * len(tcos)
    torch.manual_seed(seed)
    raw = [params["m"] + params["sigma"] * v for v in torch.randn(len(tcos), dtype=torch.float64).tolist()]
    if not params["plus"]:
        return raw
    by_cos = sorted(range(len(tcos)), key=lambda i: -tcos[i])  # highest target cosine first, stable
    out = [0.0] * len(tcos)
    for rank, i in enumerate(by_cos):
        out[i] = sorted(raw)[rank]
    return out


def reference(name, params, state, draws, cos, labels, norms, margins, ops):
    """Rows of logits and the regulariser (None if the head has none)."""
    ref = REFERENCE[name][0]
    rows = []
    for i, y in enumerate(labels):
        tc = cos[i][y] if y >= 0 else 0.3
        ctx = SimpleNamespace(norm=norms[i], margins=margins, state=state, draw=draws[i] if draws else None)
        rows.append(ref([cos[i][j] for j in range(NUM_CLASSES)], y, tc, ctx, ops, **params))
    reg = REGULARISERS[name](norms, margins, **params) if name in REGULARISERS else None
    return rows, reg


def cosines_of(cos, labels, norms, margins):
    """Cosines as a world-size-1 classifier builds them: target_cos gathered from cos (0.3 for label -1)."""
    picked = cos.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    target = torch.where(labels >= 0, picked, torch.full_like(picked, 0.3))
    return Cosines(cos, labels, target, norms, margins)


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


def reference_run(name, params, state, draws, cos, labels, norms, margins, weights):
    lab = labels.tolist()
    rows, reg = reference(name, params, state, draws, cos.tolist(), lab, norms.tolist(), margins.tolist(), math)
    values = torch.tensor(rows, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (cos, norms, margins)]
    t_rows, t_reg = reference(name, params, state, draws, *leaves[:1], lab, leaves[1], leaves[2], TORCH_OPS)
    logits = torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in r]) for r in t_rows])
    loss = (logits * weights).sum() + (0.0 if t_reg is None else t_reg)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]
    return values, reg, logits.detach(), grads


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
    assert not set(REFERENCE) & set(WAVE1_REFERENCE)
    assert set(REFERENCE) | set(WAVE1_REFERENCE) == set(MARGINS)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_defaults_follow_methods(name):
    defaults = REFERENCE[name][1]
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


@pytest.mark.parametrize("name", sorted(REFERENCE))
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
    eps = 1e-3
    thetas = THETA_GRID[(THETA_GRID >= eps) & (THETA_GRID <= math.pi - eps)]
    adaface = build_margin("adaface", m=m, h=0.0).double().train()
    curves_equal(target_curve(adaface, thetas), target_curve(build_margin("cosface", m=m), thetas))


def test_subcenter_with_one_centre_is_arcface():
    torch.manual_seed(0)
    sub = build_head("subcenter_arcface", 6, 5, sub_centers=1)
    arc = build_head("arcface", 6, 5)
    arc.load_state_dict(sub.state_dict())
    x, labels = torch.randn(8, 6), torch.randint(0, 5, (8,))
    sub_loss, sub_logits = sub.forward_with_logits(x, labels)
    arc_loss, arc_logits = arc.forward_with_logits(x, labels)
    torch.testing.assert_close(sub_logits, arc_logits, rtol=0, atol=0)
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


# --- head builder and per-class state ---


def test_build_head_gives_subcenter_arcface_three_subcentres_unless_told():
    assert build_head("subcenter_arcface", 6, 5).classifier.sub_centers == 3
    assert build_head("subcenter_arcface", 6, 5, sub_centers=2).classifier.sub_centers == 2
    assert build_head("arcface", 6, 5).classifier.sub_centers == 1


def test_adacos_gets_num_classes_from_the_head_builder():
    with pytest.raises(FacelabError, match="num_classes"):
        build_margin("adacos")(cosines_of(*inputs(THETAS)[:4]))
    assert build_head("adacos", 6, 9).margin.num_classes == 9


def test_adam_margins_live_in_the_classifier_without_weight_decay():
    from facelab.train.optim import param_groups

    torch.manual_seed(0)
    head = build_head("adam_softmax", 6, 5)
    m = head.classifier.class_margins
    assert m.shape == (5,) and ((m >= 0.3) & (m <= 0.4)).all()
    decay, no_decay = param_groups(head, 5e-4)
    assert any(p is m for p in no_decay["params"]) and not any(p is m for p in decay["params"])
    x, labels = torch.randn(8, 6), torch.randint(0, 5, (8,))
    losses = head(x, labels)
    assert set(losses) == {"loss", "ce", "reg"}
    assert losses["reg"].item() == pytest.approx(70.0 * (1 - m.clamp(0, 1).mean().item()), rel=1e-6)
    losses["loss"].backward()
    assert torch.isfinite(m.grad).all() and (m.grad != 0).any()
    assert "classifier.class_margins" in head.state_dict()
    c = head.classifier(x, labels)
    assert c.class_margins.dtype == torch.float32 and torch.equal(c.class_margins, m.detach())
    assert Classifier(6, 5)(x, labels).class_margins is None  # the default: no per-class margins
    with pytest.raises(FacelabError, match="per-class margins"):
        FaceHead(Classifier(6, 5), build_margin("adam_softmax"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"class_margins": (0.5, 0.2)},
        {"class_margins": (-0.1, 0.2)},
        {"class_margins": 0.3},
        {"class_margins": (0.3, 0.4), "normalize": False},
    ],
)
def test_classifier_rejects_bad_class_margins(kwargs):
    with pytest.raises(FacelabError, match="class_margins"):
        Classifier(6, 5, **kwargs)


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


# --- every registered head through FaceHead under bf16 autocast ---


@pytest.mark.parametrize("name", sorted(MARGINS))
def test_every_head_trains_under_bf16_autocast(name):
    torch.manual_seed(0)
    head = build_head(name, 16, 7).train()
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    for _ in range(3):
        x = (torch.randn(12, 16) * 30).requires_grad_(True)
        labels = torch.randint(0, 7, (12,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = head(x, labels)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        losses["loss"].backward()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
        opt.step()


# --- Sub-center ArcFace data cleaning ---


def loop_dominant_filter(weight, embeddings, labels, k, max_angle_deg):
    """Per class: nearest sub-centre of each image, the most popular one, the angle to it (loops, math)."""
    w, x, y = weight.tolist(), embeddings.tolist(), labels.tolist()

    def cosine(a, b):
        dot = sum(p * q for p, q in zip(a, b, strict=True))
        return dot / math.sqrt(sum(p * p for p in a) * sum(q * q for q in b))

    counts = {}
    for xi, c in zip(x, y, strict=True):
        sims = [cosine(xi, w[c * k + j]) for j in range(k)]
        nearest = sims.index(max(sims))
        counts.setdefault(c, [0] * k)[nearest] += 1
    dominant = {c: n.index(max(n)) for c, n in counts.items()}
    angles = [
        math.degrees(math.acos(min(1.0, max(-1.0, cosine(xi, w[c * k + dominant[c]])))))
        for xi, c in zip(x, y, strict=True)
    ]
    return [a <= max_angle_deg for a in angles], dominant


def noisy_class_data(num_classes=4, k=3, d=8, seed=0):
    """Each class: 8 images near its dominant sub-centre (c % k), 3 near another one, 3 random (noise)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes * k, d, generator=g, dtype=torch.float64)
    emb, labels = [], []
    for c in range(num_classes):
        dom, other = c % k, (c + 1) % k
        for centre, n, noise in ((dom, 8, 0.4), (other, 3, 0.4)):
            emb.append(weight[c * k + centre] + noise * torch.randn(n, d, generator=g, dtype=torch.float64))
        emb.append(3 * torch.randn(3, d, generator=g, dtype=torch.float64))
        labels += [c] * 14
    return weight, torch.cat(emb), torch.tensor(labels)


@pytest.mark.parametrize("max_angle_deg", [75.0, 40.0])
def test_dominant_subcenter_filter_matches_loops(max_angle_deg):
    from facelab.heads.margins.subcenter_arcface import dominant_subcenter_filter

    weight, emb, labels = noisy_class_data()
    keep = dominant_subcenter_filter(weight.float(), emb.float(), labels, 3, max_angle_deg)
    expected, dominant = loop_dominant_filter(weight, emb, labels, 3, max_angle_deg)
    assert dominant == {c: c % 3 for c in range(4)}
    assert keep.dtype == torch.bool and keep.tolist() == expected
    assert 0 < int(keep.sum()) < len(keep)
    assert dominant_subcenter_filter(weight, emb, labels, 3, 180.0).all()


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((torch.randn(10, 8), torch.randn(5, 8), torch.zeros(5, dtype=torch.int64), 3), "K=3"),
        ((torch.randn(9, 8), torch.randn(5, 7), torch.zeros(5, dtype=torch.int64), 3), "embeddings"),
        ((torch.randn(9, 8), torch.randn(5, 8), torch.full((5,), 3), 3), "labels"),
        ((torch.randn(9, 8), torch.randn(5, 8), torch.zeros(5, dtype=torch.int64), 0), "K=0"),
    ],
)
def test_dominant_subcenter_filter_bad_input(args, what):
    from facelab.heads.margins.subcenter_arcface import dominant_subcenter_filter

    with pytest.raises(FacelabError, match=what):
        dominant_subcenter_filter(*args)
