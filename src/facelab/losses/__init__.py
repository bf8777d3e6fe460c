"""Objectives: loss terms beside the classification head, one registry and one signature.

    objective(embeddings [B, d], labels [B], **extras) -> {term: weighted scalar}

`extras` are the per-sample tensors of the loader's batch (e.g. DDL's `ddl_group`), passed through
unchanged; an objective takes the keys it needs. A step-scheduled objective has `set_step(step)`
(DAIL's gradient reversal). Each OBJECTIVES entry builds its objective from the config, or returns
None when the config does not ask for it; FaceTask adds the terms to the loss dict in this order.
"""

from collections.abc import Callable

from torch import nn

from facelab.backbones.groupface import GroupFace
from facelab.config import Config
from facelab.losses.dail import DatasetInvariance
from facelab.losses.ddl import DDLLoss
from facelab.losses.groupface import GroupFaceTerm
from facelab.losses.pairs import pairs_objective


def _groupface(cfg: Config, model: nn.Module, offsets: list[int] | None) -> nn.Module | None:
    return GroupFaceTerm(model) if isinstance(model, GroupFace) else None


def _pairs(cfg: Config, model: nn.Module, offsets: list[int] | None) -> nn.Module | None:
    return pairs_objective(cfg)


def _ddl(cfg: Config, model: nn.Module, offsets: list[int] | None) -> nn.Module | None:
    d = cfg.distill
    if d.name != "ddl":
        return None
    return DDLLoss(d.kl_pos, d.kl_neg, d.order, d.bins, d.sigma, d.detach_teacher, d.negatives,
                   d.positive_min, d.bin_nodes, d.kl_form)


def _dail(cfg: Config, model: nn.Module, offsets: list[int] | None) -> nn.Module | None:
    d = cfg.dail
    if d.weight <= 0:
        return None
    return DatasetInvariance(cfg.model.embedding_size, offsets, d.weight, d.grl_lambda,
                             d.warmup_steps, d.adversarial_from, d.hidden)


Builder = Callable[[Config, nn.Module, "list[int] | None"], "nn.Module | None"]
OBJECTIVES: dict[str, Builder] = {
    "groupface": _groupface,  # GroupFace's group classification (model.groupface.groups > 0)
    "pairs": _pairs,  # contrastive / triplet / margin losses (objective: pairs)
    "ddl": _ddl,  # distribution distillation between easy and hard images (distill.name: ddl)
    "dail": _dail,  # DAIL's dataset classifier behind gradient reversal (dail.weight > 0)
}


def build_objectives(cfg: Config, model: nn.Module, offsets: list[int] | None = None,
                     ) -> dict[str, nn.Module]:
    """{name: objective} of every OBJECTIVES entry `cfg` asks for; `model` is the embedding network,
    `offsets` [D + 1] the first class of each dataset of a multi-dataset run (None: one dataset)."""
    built = {name: build(cfg, model, offsets) for name, build in OBJECTIVES.items()}
    return {name: objective for name, objective in built.items() if objective is not None}
