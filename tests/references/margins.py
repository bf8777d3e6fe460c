"""Float64 loop transcriptions of every margin's METHODS.md equation, and the batches they run on.

A reference is written once and run twice: with python floats and the `math` module it gives the
values; with 0-d float64 tensors and `TORCH_OPS` it gives gradients by autograd. Branches are python
`if`s over one scalar at a time, so a NaN leaking from an unselected branch of the vectorised code,
or a wrong mask, shows up as a mismatch.

Two kinds (together they cover MARGINS):
- TARGET_REFERENCE: margins whose target logit is a function of the target cosine alone,
  `ref(c, ops, **params)` (tests/heads/test_margins.py).
- CONTEXT_REFERENCE: margins that also read the feature norm, per-class margins, the head's
  state or random draws, or change the other columns: `ref(row, y, tc, ctx, ops, **params)`
  returns the C logits of a sample whose cosines are `row`, label `y` (-1: target on another
  rank) and target cosine `tc`; `ctx` holds its norm, the per-class margins, the head's state
  after this batch's update and its ElasticFace margin. State updates and ElasticFace draws are
  transcribed separately, once per batch, with python loops
  (tests/heads/test_margins_with_context.py, test_stateful_margins.py).
"""

import math
from types import SimpleNamespace

import torch

from facelab.heads import Cosines


def _scalar(fn):
    return lambda x: fn(torch.as_tensor(x, dtype=torch.float64))  # a clamped value may be a float


TORCH_OPS = SimpleNamespace(
    acos=_scalar(torch.acos), cos=_scalar(torch.cos), sin=_scalar(torch.sin)
)


def clamp(c):
    return min(max(c, -1.0 + 1e-7), 1.0 - 1e-7)


# target angles: exactly 0 and pi (|cos| = 1), near them, both sides of every fallback threshold
THETAS = [0.0, 1e-3, 0.2, 0.7, 1.2, math.pi / 2, 2.0, 2.5, 2.7, 2.9, 3.0, math.pi - 1e-3, math.pi]
NUM_CLASSES = 5  # columns of `batch`


def batch(thetas, dtype=torch.float64, seed=0):
    """cos [B+1, C] with row i's target at angle thetas[i].

    The last row has label -1 (target elsewhere).
    """
    g = torch.Generator().manual_seed(seed)
    b = len(thetas)
    cos = torch.rand(b + 1, NUM_CLASSES, generator=g, dtype=torch.float64) * 2 - 1
    labels = torch.tensor([i % NUM_CLASSES for i in range(b)] + [-1])
    for i, theta in enumerate(thetas):
        cos[i, labels[i]] = -1.0 if theta == math.pi else math.cos(theta)
    return cos.to(dtype), labels


def target_curve(margin, thetas):
    """Target logit and d logit / d cos along the given target angles (one sample per angle)."""
    cos = torch.cos(thetas).clamp(-1, 1).requires_grad_(True)
    c = Cosines(
        cos[:, None], torch.zeros(len(thetas), dtype=torch.int64), cos, torch.ones_like(cos)
    )
    logit = margin(c)[:, 0]
    (grad,) = torch.autograd.grad(logit.sum(), cos)
    return logit.detach(), grad


def ref_softmax(c, ops):
    return c


def ref_normface(c, ops, s):
    return s * c


def ref_cosface(c, ops, s, m):
    return s * (c - m)


def ref_arcface(c, ops, s, m, easy_margin, straight_through, fallback):
    # the straight-through value is cos(acos(c) + m) unclamped, as insightface (exact at |c| = 1)
    theta = ops.acos(c if straight_through else clamp(c))
    if easy_margin:
        value = ops.cos(theta + m) if c > 0 else c
    elif theta + m <= math.pi or not fallback:
        value = ops.cos(theta + m)
    else:
        value = c - m * math.sin(m)
    if straight_through:  # the value of `value`, the derivative of c
        value = c + float(value - c) if isinstance(c, float) else c + (value - c).detach()
    return s * value


def ref_sphereface(c, ops, s, m1):
    theta = ops.acos(clamp(c))
    k = 0
    while theta > (k + 1) * math.pi / m1:  # theta in [k pi/m1, (k+1) pi/m1]
        k += 1
    return s * ((-1) ** k * ops.cos(m1 * theta) - 2 * k)


def ref_combined(c, ops, s, m1, m2, m3, fallback):
    theta = ops.acos(clamp(c))
    if m1 * theta + m2 <= math.pi or not fallback:
        return s * (ops.cos(m1 * theta + m2) - m3)
    phi = math.pi - (math.pi - m2) / m1  # documented fallback: generalised ArcFace th/mm
    mm = max(phi * math.sin(phi), 1 - math.cos(phi))
    return s * (c - mm - m3)


# name -> (target-logit reference, METHODS.md defaults, extra configurations to test)
TARGET_REFERENCE = {
    "softmax": (ref_softmax, {}, [{}]),
    "normface": (ref_normface, {"s": 64.0}, [{}, {"s": 30.0}]),
    "sphereface": (
        ref_sphereface,
        {"s": 64.0, "m1": 1.35},
        [{}, {"m1": 1.0}, {"m1": 2.5}, {"m1": 4.0, "s": 30.0}],
    ),
    "cosface": (ref_cosface, {"s": 64.0, "m": 0.35}, [{}, {"m": 0.2, "s": 30.0}]),
    "arcface": (
        ref_arcface,
        {"s": 64.0, "m": 0.5, "easy_margin": False, "straight_through": False, "fallback": True},
        [{}, {"m": 0.3, "s": 30.0}, {"easy_margin": True}, {"straight_through": True},
         {"fallback": False}, {"straight_through": True, "fallback": False, "m": 1.2}],
    ),
    "combined": (
        ref_combined,
        {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2, "fallback": True},
        [{}, {"m1": 1.35}, {"m1": 2.0, "m2": 0.5, "m3": 0.1}, {"m1": 1.0, "m2": 0.5, "m3": 0.0},
         {"m1": 1.35, "fallback": False}, {"m2": 0.5, "fallback": False}],
    ),
}


def reference_logits(name, params, cos, labels, ops):
    """Loops over samples and classes.

    cos is a list of lists of floats (math) or a tensor (torch).
    """
    ref = TARGET_REFERENCE[name][0]
    base = (lambda c: c) if name == "softmax" else (lambda c: params["s"] * c)
    rows = []
    for i in range(len(labels)):
        row = [
            ref(cos[i][j], ops, **params) if j == labels[i] else base(cos[i][j])
            for j in range(NUM_CLASSES)
        ]
        rows.append(row)
    return rows


# --- margins that read more than the target cosine ---


def arc(c, m, ops, easy_margin=False, fallback=True):
    """ArcFace target cos(θ + m) with the th/mm fallback (unless fallback is False), or easy margin.

    m is a float or a 0-d tensor.
    """
    theta = ops.acos(clamp(c))
    if easy_margin:
        return ops.cos(theta + m) if c > 0 else c
    if theta + m <= math.pi or not fallback:
        return ops.cos(theta + m)
    return c - m * ops.sin(m)


def with_target(row, y, target, other):
    return [target if j == y else other(row[j]) for j in range(len(row))]


def ref_adacos(row, y, tc, ctx, ops, num_classes, mode):
    s = ctx.state["scale"]
    return [s * c for c in row]


def ref_adam_softmax(row, y, tc, ctx, ops, s, lam):
    m_y = ctx.margins[y] if y >= 0 else None  # as stored: bounds are kept after each step
    return with_target(row, y, s * (tc - m_y) if y >= 0 else None, lambda c: s * c)


def ref_mv(row, y, tc, ops, s, t, mode, f, target):
    def other(c):
        if c > f:  # mis-classified vector
            return s * ((t + 1) * c + t) if mode == "adaptive" else s * (c + t)
        return s * c

    return with_target(row, y, s * target, other)


def ref_mv_am(row, y, tc, ctx, ops, s, m, t, mode, easy_margin):
    # easy margin: only where cos θ_y > m (original code); the mask keeps cos θ_y - m
    target = tc if easy_margin and not tc > m else tc - m
    return ref_mv(row, y, tc, ops, s, t, mode, f=tc - m, target=target)


def ref_mv_arc(row, y, tc, ctx, ops, s, m, t, mode, easy_margin, fallback):
    f = ops.cos(ops.acos(clamp(tc)) + m)  # margined target before the fallback / easy-margin switch
    target = arc(tc, m, ops, easy_margin, fallback)
    return ref_mv(row, y, tc, ops, s, t, mode, f=f, target=target)


def ref_curricularface(row, y, tc, ctx, ops, s, m, fallback):
    t = ctx.state["t"]
    f = ops.cos(ops.acos(clamp(tc)) + m)  # hard-negative threshold, before the fallback
    target = s * arc(tc, m, ops, fallback=fallback)
    return with_target(row, y, target, lambda c: s * c * (t + c) if c > f else s * c)


def ref_subcenter_arcface(row, y, tc, ctx, ops, s, m, easy_margin, straight_through, fallback):
    target = ref_arcface(tc, ops, s, m, easy_margin, straight_through, fallback)
    return with_target(row, y, target, lambda c: s * c)


def ref_magface(row, y, tc, ctx, ops, s, l_a, u_a, l_m, u_m, lambda_g, easy_margin, fallback):
    a = min(max(ctx.norm, l_a), u_a)
    m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
    return with_target(row, y, s * arc(tc, m, ops, easy_margin, fallback), lambda c: s * c)


def ref_elasticface_arc(row, y, tc, ctx, ops, s, m, sigma, plus, fallback):
    return with_target(row, y, s * arc(tc, ctx.draw, ops, fallback=fallback), lambda c: s * c)


def ref_elasticface_cos(row, y, tc, ctx, ops, s, m, sigma, plus):
    return with_target(row, y, s * (tc - ctx.draw), lambda c: s * c)


def ref_adaface(row, y, tc, ctx, ops, s, m, h, alpha, eps):
    norm = ctx.norm.item() if isinstance(ctx.norm, torch.Tensor) else ctx.norm  # detached
    a = min(max(norm, 0.001), 100.0)  # clipped as the official code
    z = min(max(h * (a - ctx.state["mu"]) / (ctx.state["sigma"] + eps), -1.0), 1.0)

    def bounded(c):  # every cosine clamped to [-1 + eps, 1 - eps] first, as the official code
        return min(max(c, -1.0 + eps), 1.0 - eps)

    theta = min(max(ops.acos(clamp(bounded(tc))) - m * z, eps), math.pi - eps)
    return with_target(row, y, s * (ops.cos(theta) - (m + m * z)), lambda c: s * bounded(c))


def reg_adam_softmax(norms, margins, s, lam):
    return lam * (1 - sum(margins) / len(margins))


def reg_magface(norms, margins, s, l_a, u_a, l_m, u_m, lambda_g, easy_margin, fallback):
    a = [min(max(norms[i], l_a), u_a) for i in range(len(norms))]
    return lambda_g * sum(1 / v + v / u_a**2 for v in a) / len(a)


REGULARISERS = {"adam_softmax": reg_adam_softmax, "magface": reg_magface}

ARC = {"s": 64.0, "m": 0.5, "easy_margin": False, "straight_through": False, "fallback": True}
MAG = {"s": 64.0, "l_a": 10.0, "u_a": 110.0, "l_m": 0.45, "u_m": 0.8, "lambda_g": 35.0,
       "easy_margin": True, "fallback": True}
# name -> (row reference, METHODS.md defaults (None: resolved by the head, tested apart),
#          configurations)
CONTEXT_REFERENCE = {
    "adacos": (
        ref_adacos,
        {"num_classes": None, "mode": "dynamic"},
        [{"num_classes": 5}, {"num_classes": 5, "mode": "fixed"}, {"num_classes": 1000}],
    ),
    "adam_softmax": (ref_adam_softmax, {"s": 32.0, "lam": 70.0}, [{}, {"s": 16.0, "lam": 1.5}]),
    "mv_am": (
        ref_mv_am,
        {"s": 32.0, "m": 0.35, "t": 0.2, "mode": "adaptive", "easy_margin": False},
        [
            {},
            {"mode": "fixed"},
            {"s": 16.0, "m": 0.2, "t": 0.5},
            {"easy_margin": True},
            {"easy_margin": True, "m": 0.6, "mode": "fixed"},
        ],
    ),
    "mv_arc": (
        ref_mv_arc,
        {"s": 32.0, "m": 0.5, "t": 0.2, "mode": "adaptive", "easy_margin": False,
         "fallback": True},
        [{}, {"mode": "fixed"}, {"easy_margin": True}, {"m": 1.2, "t": 0.4},
         {"m": 1.2, "fallback": False}],
    ),
    "curricularface": (
        ref_curricularface,
        {"s": 64.0, "m": 0.5, "fallback": True},
        [{}, {"s": 30.0, "m": 1.0}, {"m": 1.0, "fallback": False}],
    ),
    "subcenter_arcface": (
        ref_subcenter_arcface,
        ARC,
        [{}, {"m": 0.3, "s": 30.0}, {"easy_margin": True}, {"fallback": False}],
    ),
    "magface": (
        ref_magface,
        MAG,
        [{}, {"easy_margin": False}, {"u_m": 1.5, "lambda_g": 70.0, "easy_margin": False},
         {"u_m": 1.5, "lambda_g": 70.0, "easy_margin": False, "fallback": False}],
    ),
    "elasticface_arc": (
        ref_elasticface_arc,
        {"s": 64.0, "m": 0.5, "sigma": None, "plus": False, "fallback": True},
        [{}, {"plus": True}, {"sigma": 0.3, "plus": True}, {"sigma": 0.3}, {"sigma": 0.0},
         {"sigma": 0.3, "fallback": False}],
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


SIGMAS = {("elasticface_arc", False): 0.05, ("elasticface_arc", True): 0.0175}
SIGMAS.update({("elasticface_cos", False): 0.05, ("elasticface_cos", True): 0.02})


def resolved(name, config):
    """METHODS.md defaults updated with config; ElasticFace's σ = None becomes the paper's σ."""
    params = {**CONTEXT_REFERENCE[name][1], **config}
    if name.startswith("elasticface") and params["sigma"] is None:
        params["sigma"] = SIGMAS[(name, params["plus"])]
    return params


def updated_state(name, params, state, cos, labels, tcos, norms, training):
    """The state after one batch (python floats, loops); unchanged in eval mode."""
    if not training:
        return dict(state)
    if name == "adacos" and params["mode"] == "dynamic":
        s = state["scale"]
        total = sum(
            math.exp(s * cos[i][k])
            for i in range(len(labels))
            for k in range(NUM_CLASSES)
            if k != labels[i]
        )
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
    """Per-sample ElasticFace margins: m + σ·randn(B) after torch.manual_seed(seed).

    plus: assigned by rank.
    """
    if not training:
        return [params["m"]] * len(tcos)
    torch.manual_seed(seed)
    raw = [
        params["m"] + params["sigma"] * v
        for v in torch.randn(len(tcos), dtype=torch.float64).tolist()
    ]
    if not params["plus"]:
        return raw
    by_cos = sorted(range(len(tcos)), key=lambda i: -tcos[i])  # highest target cosine first, stable
    out = [0.0] * len(tcos)
    for rank, i in enumerate(by_cos):
        out[i] = sorted(raw)[rank]
    return out


def context_reference(name, params, state, draws, cos, labels, norms, margins, ops):
    """Rows of logits and the regulariser (None if the head has none)."""
    ref = CONTEXT_REFERENCE[name][0]
    rows = []
    for i, y in enumerate(labels):
        tc = cos[i][y] if y >= 0 else 0.3
        ctx = SimpleNamespace(
            norm=norms[i], margins=margins, state=state, draw=draws[i] if draws else None
        )
        rows.append(ref([cos[i][j] for j in range(NUM_CLASSES)], y, tc, ctx, ops, **params))
    reg = REGULARISERS[name](norms, margins, **params) if name in REGULARISERS else None
    return rows, reg


def cosines_of(cos, labels, norms, margins):
    """Cosines as a world-size-1 classifier builds them.

    target_cos is gathered from cos (0.3 for label -1).
    """
    picked = cos.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    target = torch.where(labels >= 0, picked, torch.full_like(picked, 0.3))
    return Cosines(cos, labels, target, norms, margins)


def reference_run(name, params, state, draws, cos, labels, norms, margins, weights):
    lab = labels.tolist()
    rows, reg = context_reference(
        name, params, state, draws, cos.tolist(), lab, norms.tolist(), margins.tolist(), math
    )
    values = torch.tensor(rows, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (cos, norms, margins)]
    t_rows, t_reg = context_reference(
        name, params, state, draws, *leaves[:1], lab, leaves[1], leaves[2], TORCH_OPS
    )
    logits = torch.stack(
        [torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in r]) for r in t_rows]
    )
    loss = (logits * weights).sum() + (0.0 if t_reg is None else t_reg)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]
    return values, reg, logits.detach(), grads
