"""GroupFace (Kim et al. 2020, "GroupFace: learning latent groups and constructing group-based
representations for face recognition", CVPR; METHODS.md "Architecture pieces"): a wrapper that turns
any backbone into a group-aware embedding network, usable with any head.

    x      = backbone(images)          shared feature [B, d_x] (the backbone's embedding, see below)
    v_x    = FC(x)                     instance embedding [B, d]
    v_Gk   = FC_k(x), k = 1..K         group embeddings [B, K, d] (K FCs as one Linear d_x -> K·d)
    p(G|x) = softmax(GDN(x))           group decision network: FC-BN-PReLU (hidden) -> FC-BN-PReLU
                                       (hidden) -> FC (K), softmax over the K groups   [B, K]
    output = v_x + Σ_k p(G_k|x)·v_Gk   final embedding [B, d]

Self-distributed labels (the paper's Eq. 5-6), without gradient:
p̃_k = (p_k - mean_batch p_k)/K + 1/K, label = argmax_k p̃_k; auxiliary loss λ·CE(p, label)
(defaults K = 32, λ = 0.1).

Choices: the shared feature x is the backbone's embedding output (after its neck), not the pre-neck
feature map: every backbone has it, with the same size, and K = 32 group FCs on a flattened 512x7x7
map would hold 32 x 25088 x d weights. The "two FC-BN-PReLU layers, 256 hidden, softmax over K" of
METHODS.md are read as two hidden layers followed by the linear layer to the K group logits (a PReLU
or BN directly before the softmax would bend the logits for no reason).

The group-classification term reaches the trainer through `aux_losses()`: {name: scalar} of the last
training-mode forward (already weighted; here {"groupface": λ·CE}), forgotten once handed over; the
`groupface` objective (facelab.losses.groupface) adds it to the loss dict and the total. In eval
mode the wrapper returns the [B, d] embedding only and records nothing, so evaluation and export see
a plain embedding network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.errors import FacelabError


def self_distributed_labels(probs: Tensor) -> Tensor:
    """Group labels [B] (int64) of group probabilities p [B, K]:
    argmax_k (p_k - mean_batch p_k)/K + 1/K (the paper's Eq. 5-6)."""
    k = probs.shape[1]
    shifted = (probs - probs.mean(dim=0, keepdim=True)) / k + 1.0 / k  # [B, K]
    return shifted.argmax(dim=1)


def fc_bn_prelu(in_features: int, out_features: int) -> nn.Sequential:
    layers = (nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features),
              nn.PReLU(out_features))
    return nn.Sequential(*layers)


class GroupFace(nn.Module):
    """Wraps a backbone (images -> [B, feature_size]) into images -> group-aware embedding
    [B, d]."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_size: int,
        embedding_size: int,
        groups: int = 32,
        lam: float = 0.1,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        _check(_is_int(groups) and groups >= 2, "groups", groups, "must be an integer >= 2")
        real = isinstance(lam, (int, float)) and not isinstance(lam, bool)
        _check(real and 0.0 <= lam < float("inf"), "lam", lam, "must be a finite number >= 0")
        _check(_is_int(hidden) and hidden >= 1, "hidden", hidden, "must be an integer >= 1")
        self.backbone = backbone
        self.groups, self.lam, self.embedding_size = groups, float(lam), embedding_size
        self.instance = nn.Linear(feature_size, embedding_size)
        # the K group FCs side by side
        self.group = nn.Linear(feature_size, groups * embedding_size)
        self.decision = nn.Sequential(fc_bn_prelu(feature_size, hidden),
                                      fc_bn_prelu(hidden, hidden))
        self.group_logits = nn.Linear(hidden, groups)
        self._aux: dict[str, Tensor] = {}

    def extra_repr(self) -> str:
        return f"groups={self.groups}, lam={self.lam}, embedding_size={self.embedding_size}"

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(final embedding [B, d], group logits [B, K]) of shared features x [B, d_x]."""
        v_x = self.instance(x)  # [B, d]
        v_g = self.group(x).view(x.shape[0], self.groups, self.embedding_size)  # [B, K, d]
        logits = self.group_logits(self.decision(x))  # [B, K]
        probs = torch.softmax(_wide(logits), dim=1).to(v_g.dtype)  # [B, K]
        return v_x + (probs[:, :, None] * v_g).sum(dim=1), logits

    def forward(self, images: Tensor) -> Tensor:
        embedding, logits = self.embed(self.backbone(images))
        if self.training:
            with torch.autocast(device_type=logits.device.type, enabled=False):
                logits = _wide(logits)  # [B, K]
                labels = self_distributed_labels(torch.softmax(logits.detach(), dim=1))  # [B]
                self._aux = {"groupface": self.lam * F.cross_entropy(logits, labels)}
        return embedding  # [B, d]

    def aux_losses(self) -> dict[str, Tensor]:
        """The weighted auxiliary terms of the last training-mode forward ({} if none); forgets
        them."""
        aux, self._aux = self._aux, {}
        return aux


def _wide(x: Tensor) -> Tensor:
    """x in float32 or wider (float32 under bf16/fp16 autocast, float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, field: str, value: object, rule: str) -> None:
    if not ok:
        where = f"(config model.groupface.{field})"
        raise FacelabError(f"groupface: {field}={value!r} is invalid: {rule} {where}")


__all__ = ["GroupFace", "self_distributed_labels"]
