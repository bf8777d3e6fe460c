"""Fine-tuning: a new run that starts from another model's embedding network (`model.init_from`)
and may leave parts of it untrained (`train.freeze`).

init_from is a facelab run folder or checkpoint file: a run's, or one an importer wrote (keys model,
config, preprocess). `load_init_source` reads it when a NEW run starts, before the run folder is
locked or any data read, and checks that its config describes the run's architecture and that its
weights fit the run's network (built on the meta device: no memory, no random draws). The loop
copies the weights into the task's backbone once the task is built (facelab.train.loop._build),
and records the source (path and facelab.model.weights_digest) in the run's checkpoint and
metrics.json. The head is new: the run's classes are not the source's, so nothing of the source's
classifier is used. A resumed run restores its own weights and never reads init_from again (the
source may since have moved or changed); the key itself may not change on resume
(facelab.train.run.RESUMABLE).

Preprocessing. A recipe has no preprocessing keys: a run records PREPROCESS_DEFAULT with the size
measured on its training images. A fine-tuned run adopts the source's colour, mean and std, because
they belong to the weights: its first layer learnt on inputs normalised that way; fine-tuning it on
other inputs would start from features of a wrongly normalised input, and the run's record would
misdescribe what the model expects. Template and size belong to the training images: the size is
measured, the template is arcface112 for every run (the only template facelab align writes). A
source recorded with another size or template is refused naming preprocess.<field>: its weights
would be fine-tuned on crops unlike those they learnt on.

Freezing. Each train.freeze entry is a prefix of the backbone's parameter names, matched on whole
dotted components ("stages.1" covers "stages.1.0.conv.weight", not "stages.10.0.conv.weight").
Frozen parameters get requires_grad False, so the optimiser never holds them
(facelab.train.optim.param_groups): neither the step, momentum nor weight decay moves them.
BatchNorm layers wholly under an entry are kept in eval mode while training (FaceTask.train): they
normalise with the running statistics they came with and do not update them, so a frozen part
computes exactly the function it was given. In training mode its output would depend on the batch,
and its running statistics would drift toward the new data, changing the "frozen" part at
evaluation.
"""

import dataclasses
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from facelab.backbones import BACKBONES
from facelab.config import Config, ModelConfig
from facelab.data.transforms import check_preprocess
from facelab.errors import FacelabError
from facelab.model import build_model, load_checkpoint, resolve_checkpoint, weights_digest

INIT_KEY = "model.init_from"
FREEZE_KEY = "train.freeze"
# the preprocessing fields a fine-tuned run takes from its source (they belong to the weights)
ADOPTED = ("colour", "mean", "std")
# the fields that belong to the training images and must agree with the source's
MATCHED = {"size": "measured on the training images",
           "template": "every run trains on arcface112 crops, the template facelab align writes"}
_UNSET = "(not set)"


@dataclass(frozen=True)
class InitSource:
    """The model a new run starts from: its checkpoint file, embedding weights (checked to fit the
    run's network) and preprocessing record."""

    path: Path  # the checkpoint file, absolute
    state: dict[str, Tensor]  # the source's embedding network (its checkpoint's "model")
    preprocess: dict  # its preprocessing record, checked
    digest: str  # facelab.model.weights_digest(state): the name exports and galleries give it

    def record(self) -> dict:
        """What the run keeps of its source: the checkpoint's `init_from` and metrics.json's."""
        return {"path": str(self.path), "weights_digest": self.digest}


def load_init_source(cfg: Config) -> InitSource | None:
    """The source named by cfg.model.init_from, checked against the run's architecture; None when
    the run starts from random weights. FacelabError naming model.init_from for a missing or
    unreadable checkpoint, another architecture (the first differing config field and both
    values) or weights that do not fit (the first offending tensor)."""
    if cfg.model.init_from is None:
        return None
    try:
        path = resolve_checkpoint(cfg.model.init_from).resolve()
        ckpt = load_checkpoint(path)
    except FacelabError as e:
        raise FacelabError(f"config {INIT_KEY}: {e} (give a facelab run folder or checkpoint "
                           "file)") from None
    where = f"config {INIT_KEY}: {path}"
    config = ckpt["config"]
    source_model = config.get("model", {}) if isinstance(config, dict) else None
    if not isinstance(source_model, dict):
        raise FacelabError(f"{where}: its config has no model section")
    check_architecture(cfg.model, source_model, where)
    state = ckpt["model"]
    check_weights(_meta_model(cfg).state_dict(), state, where)
    if not isinstance(ckpt["preprocess"], dict):
        raise FacelabError(f"{where}: its preprocess record is not a mapping")
    try:
        preprocess = check_preprocess(ckpt["preprocess"])
    except FacelabError as e:
        raise FacelabError(f"{where}: {e}") from None
    return InitSource(path, state, preprocess, weights_digest(state))


def check_architecture(model: ModelConfig, source: dict, where: str) -> None:
    """FacelabError unless the source's model config (a checkpoint's config["model"]) builds the
    run's network: backbone, embedding_size, backbone kwargs (with the backbone's defaults filled
    in, so an unset argument equals its default) and GroupFace's groups and hidden width. The
    GroupFace loss weight (lam) is a training choice, free to differ."""
    run, defaults = dataclasses.asdict(model), dataclasses.asdict(ModelConfig())
    src = {**defaults, **source}  # a key the source's facelab did not have: it ran the default
    src["groupface"] = {**defaults["groupface"], **(src["groupface"] or {})}
    for key in ("backbone", "embedding_size"):
        _same(f"model.{key}", src[key], run[key], where)
    mine = _backbone_kwargs(model.backbone, run["kwargs"])
    theirs = _backbone_kwargs(model.backbone, src["kwargs"] or {})
    for key in sorted(set(mine) | set(theirs)):
        _same(f"model.kwargs.{key}", theirs.get(key, _UNSET), mine.get(key, _UNSET), where)
    for key in ("groups", "hidden"):
        _same(f"model.groupface.{key}", src["groupface"][key], run["groupface"][key], where)


def _same(key: str, source: Any, run: Any, where: str) -> None:
    if source != run:
        raise FacelabError(
            f"{where}: the source's {key} is {source!r}, this run's is {run!r}; fine-tuning keeps "
            f"the source's architecture (set {key} to {source!r})"
        )


def _backbone_kwargs(name: str, kwargs: dict) -> dict:
    """`kwargs` with the defaults of backbone `name`'s other arguments filled in."""
    factory = BACKBONES.get(name)
    if factory is None:
        return dict(kwargs)
    defaults = {
        p.name: p.default for p in inspect.signature(factory).parameters.values()
        if p.name != "embedding_size" and p.default is not inspect.Parameter.empty
    }
    return {**defaults, **kwargs}


def check_weights(expected: dict[str, Tensor], state: Any, where: str) -> None:
    """FacelabError naming the first tensor of `state` that a strict load into a network with
    state dict `expected` would refuse: missing, unexpected, or of another shape."""
    if not isinstance(state, dict):
        raise FacelabError(f"{where}: its model entry is not a state dict")
    missing = [name for name in expected if name not in state]
    if missing:
        raise FacelabError(f"{where}: its weights lack {missing[0]!r} of this run's network "
                           f"({len(missing)} tensor(s) missing)")
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise FacelabError(f"{where}: its weights hold {unexpected[0]!r}, which this run's network "
                           f"has not ({len(unexpected)} unexpected tensor(s))")
    for name, want in expected.items():
        got = state[name]
        if not isinstance(got, Tensor):
            raise FacelabError(f"{where}: its entry {name!r} is not a tensor")
        if tuple(got.shape) != tuple(want.shape):
            raise FacelabError(f"{where}: its tensor {name!r} has shape {tuple(got.shape)}, this "
                               f"run's network needs {tuple(want.shape)}")


def init_preprocess(source: InitSource, measured: dict) -> dict:
    """The preprocessing a run initialised from `source` trains and records: `measured` (the run's
    own: PREPROCESS_DEFAULT with the data's size) with the source's colour, mean and std; its
    size and template must agree (see the module docstring)."""
    for key, why in MATCHED.items():
        if source.preprocess[key] != measured[key]:
            raise FacelabError(
                f"config {INIT_KEY}: {source.path}: the source's preprocess.{key} is "
                f"{source.preprocess[key]!r}, this run's is {measured[key]!r} ({why}); train on "
                "images prepared as the source's were"
            )
    return adopt_preprocess(source.preprocess, measured)


def adopt_preprocess(record: dict, measured: dict) -> dict:
    """`measured` with `record`'s colour, mean and std: the input normalisation of the weights
    that `record` describes (a source's, or the checkpoint a resumed run continues)."""
    record = check_preprocess(record)
    return {**measured, **{key: record[key] for key in ADOPTED}}


def load_backbone(backbone: nn.Module, source: InitSource) -> None:
    """Copy the source's weights into `backbone` (strict: names and shapes, checked before by
    load_init_source)."""
    try:
        backbone.load_state_dict(source.state, strict=True)
    except RuntimeError as e:  # a network unlike the one checked: name the problem all the same
        raise FacelabError(f"config {INIT_KEY}: {source.path}: {e}") from None


def _meta_model(cfg: Config) -> nn.Module:
    """The run's embedding network on the meta device: its names and shapes, without memory."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_model(cfg)


# ---------------------------------------------------------------- train.freeze


def is_under(name: str, prefixes: Iterable[str]) -> bool:
    """Whether the dotted `name` is one of `prefixes` or inside one (whole components only)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def check_freeze(cfg: Config) -> None:
    """FacelabError for a train.freeze entry that matches no backbone parameter (the backbone is
    built on the meta device: cheap, no random draws)."""
    if cfg.train.freeze:
        _check_prefixes(_meta_model(cfg), cfg.train.freeze)


def _check_prefixes(backbone: nn.Module, prefixes: Sequence[str]) -> None:
    names = [name for name, _ in backbone.named_parameters()]
    for i, prefix in enumerate(prefixes):
        if not any(is_under(name, [prefix]) for name in names):
            tops = ", ".join(name for name, _ in backbone.named_children())
            raise FacelabError(
                f"config {FREEZE_KEY}[{i}]: {prefix!r} matches no backbone parameter; entries are "
                f"dotted prefixes of the parameter names, whose top-level modules are: {tops}"
            )


def freeze_parameters(backbone: nn.Module, prefixes: Sequence[str]) -> int:
    """Set requires_grad False on the backbone parameters under `prefixes`; returns how many
    values (elements) that freezes. FacelabError naming an entry that matches nothing."""
    _check_prefixes(backbone, prefixes)
    count = 0
    for name, param in backbone.named_parameters():
        if is_under(name, prefixes):
            param.requires_grad_(False)
            count += param.numel()
    return count


def frozen_batchnorms(backbone: nn.Module, prefixes: Sequence[str]) -> list[_BatchNorm]:
    """The BatchNorm layers (any kind: torch's, SyncBatchNorm, facelab's GlobalBatchNorm) wholly
    inside a frozen part; looked up by name each time, so layers converted in place for a
    multi-process run are found too."""
    if not prefixes:
        return []
    return [module for name, module in backbone.named_modules()
            if isinstance(module, _BatchNorm) and is_under(name, prefixes)]


__all__ = ["InitSource", "adopt_preprocess", "check_architecture", "check_freeze", "check_weights",
           "freeze_parameters", "frozen_batchnorms", "init_preprocess", "is_under",
           "load_backbone", "load_init_source"]
