"""The `Margin` base class and the pieces every margin-based softmax head shares.

A margin turns `Cosines` (METHODS.md, "Margin-based softmax heads") into the logits that go into
cross-entropy. Most heads change only the target column: they define `target(target_cos) -> [B]`
(the margined cosine, before the scale `s`) and inherit `forward`. A margin never knows about
sharding: it reads the target cosine from `Cosines.target_cos` and writes it into the column
`Cosines.labels` names, leaving rows with label -1 (target on another rank) untouched.
"""

import inspect
import math

import torch
from torch import Tensor, nn

from facelab.errors import FacelabError
from facelab.heads.cosines import Cosines

# cos is clamped to [-1 + EPS, 1 - EPS] before acos / sqrt(1 - cos^2): finite gradients at |cos| = 1
EPS = 1e-7


def safe_acos(cos: Tensor) -> Tensor:
    """theta = acos(cos) with cos clamped to [-1 + EPS, 1 - EPS], so that d theta / d cos stays
    finite."""
    return torch.acos(cos.clamp(-1.0 + EPS, 1.0 - EPS))


def cos_add(cos: Tensor, m: float | Tensor) -> Tensor:
    """cos(θ + m) = cos θ·cos m - sin θ·sin m, with sin θ = sqrt(1 - cos²) ≥ 0 (θ in
    [0, π]) and cos clamped inside the sqrt only: better conditioned than cos(acos(cos) + m) and
    exactly cos θ when m = 0.
    `m` is one margin or one per sample (a tensor shaped like `cos`)."""
    sin = torch.sqrt(1.0 - cos.clamp(-1.0 + EPS, 1.0 - EPS) ** 2)
    if isinstance(m, Tensor):
        return cos * torch.cos(m) - sin * torch.sin(m)
    return cos * math.cos(m) - sin * math.sin(m)


def arc_target(
    cos: Tensor,
    m: float | Tensor,
    easy_margin: bool = False,
    fallback: bool = True,
    value_only: bool = False,
) -> Tensor:
    """ArcFace's target cos(θ + m) [B] with its fallback, for one margin or one per sample [B].

    Where θ + m > π (cos θ <= cos(π - m), m > 0) the value is `cos θ - m·sin m` (the original
    `th`/`mm`), monotone in θ; `fallback=False`: cos(θ + m) everywhere, which turns back up past
    π (insightface's current heads, the official ElasticFace and MV-Softmax code); `easy_margin`:
    the margin applies only where cos θ > 0, plain cos θ elsewhere (no fallback needed).
    `value_only`: cos(acos(cos) + m) unclamped, exact at |cos θ| = 1 (as insightface computes it)
    but with an infinite derivative there: for values whose gradient is taken elsewhere
    (straight-through heads).
    """
    if value_only:
        margined = torch.cos(torch.acos(cos.clamp(-1.0, 1.0)) + m)  # [B]
    else:
        margined = cos_add(cos, m)  # [B]
    if easy_margin:
        return torch.where(cos > 0, margined, cos)
    if not fallback:
        return margined
    if isinstance(m, Tensor):
        # m <= 0: never past π
        th = torch.where(m > 0, torch.cos(math.pi - m), torch.full_like(m, -2.0))
        return torch.where(cos > th, margined, cos - m * torch.sin(m))
    return torch.where(cos > math.cos(math.pi - m), margined, cos - m * math.sin(m))


def hard_negatives(c: Cosines, threshold: Tensor) -> Tensor:
    """Mask [B, C]: non-target columns j with cos θ_j > threshold[i] [B] (MV-Softmax,
    CurricularFace).

    The target column is never hard; rows whose target lives on another rank (label -1) still have
    their local non-targets compared, against the shared margined target cosine.
    """
    cols = torch.arange(c.cos.shape[1], device=c.cos.device)  # [C]
    return (c.labels[:, None] != cols[None, :]) & (c.cos > threshold[:, None].to(c.cos.dtype))


def replace_target(cos: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """Out-of-place copy of `cos` [B, C] with column labels[i] of row i set to target[i] [B].

    Rows with labels[i] == -1 are returned unchanged; the gradient of a replaced entry flows to
    `target` only, never to the old value.
    """
    cols = torch.arange(cos.shape[1], device=cos.device)  # [C]
    hit = labels[:, None] == cols[None, :]  # [B, C]; a -1 label matches no column
    return torch.where(hit, target[:, None].to(cos.dtype), cos)


class Margin(nn.Module):
    """Base of every margin head: `forward(Cosines) -> logits [B, C_local]`.

    Subclasses set `name` (the registry key), `s` (the logit scale) and implement `target`, or
    override `forward` when more than the target column changes. `normalized = False` asks the
    classifier for raw logits W·x + b instead of cosines (only the plain `softmax` baseline).
    `sub_centers` and `class_margin_init` tell the head builder what classifier the margin expects
    (Sub-center ArcFace: K = 3; AdaM-Softmax: per-class margins init U(0.3, 0.4), kept in
    `class_margin_bounds` by `FaceHead.after_step`).
    """

    name: str = ""
    normalized: bool = True
    s: float = 1.0
    # sub-centres per class the head builder gives the classifier unless told otherwise
    sub_centers: int = 1
    # (low, high): the classifier keeps per-class margins
    class_margin_init: tuple[float, float] | None = None
    # (low, high): the stored per-class margins are clamped to it after every optimiser step
    class_margin_bounds: tuple[float, float] | None = None

    def target(self, target_cos: Tensor) -> Tensor:
        """Margined target cosine [B] from cos(theta_y) [B], before the scale `s`."""
        raise NotImplementedError(f"{type(self).__name__} must implement target() or forward()")

    def with_target(self, c: Cosines) -> Tensor:
        """`c.cos` [B, C] with the target column replaced by `target(c.target_cos)`."""
        return replace_target(c.cos, c.labels, self.target(c.target_cos))

    def forward(self, c: Cosines) -> Tensor:
        return self.s * self.with_target(c)  # [B, C]

    def regularizer(self, c: Cosines) -> Tensor | None:
        """Extra loss term (a scalar) added to the cross-entropy, or None."""
        return None

    def extra_repr(self) -> str:
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return ", ".join(f"{n}={getattr(self, n)!r}" for n in names)

    def error(self, field: str, value: object, rule: str) -> FacelabError:
        return FacelabError(f"margin '{self.name}': {field}={value!r} is invalid: {rule}")

    def real(
        self, field: str, value: object, low: float, high: float = math.inf, open_low: bool = False
    ) -> float:
        """Checks that `value` is a real number in [low, high] ((low, high] if open_low) and returns
        it."""
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        )
        ok = ok and (value > low if open_low else value >= low) and value <= high
        if not ok:
            bracket = "(" if open_low else "["
            raise self.error(field, value, f"must be a real number in {bracket}{low:g}, {high:g}]")
        return float(value)

    def flag(self, field: str, value: object) -> bool:
        """Checks that `value` is a bool and returns it."""
        if not isinstance(value, bool):
            raise self.error(field, value, "must be true or false")
        return value
