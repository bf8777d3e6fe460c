"""Backbones: [B, 3, S, S] normalised faces -> un-normalised embeddings [B, d].

S is 112 and the normalisation (x/255 - 0.5)/0.5 for facelab's own backbones; imported
architectures keep their native input: `dlib_resnet` takes 150x150 RGB chips normalised as
dlib does (backbones/dlib_resnet.py, `dlib_preprocess`). `input_size(name)` gives S (from
INPUT_SIZES, 112 for names not listed).

`BACKBONES` is the registry (name -> factory); `build_backbone` checks the name and keyword
arguments and turns mistakes into a FacelabError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from facelab.backbones.dlib_resnet import INPUT_SIZE as DLIB_INPUT_SIZE
from facelab.backbones.dlib_resnet import dlib_resnet
from facelab.backbones.flops import count_macs
from facelab.backbones.iresnet import (
    IRESNET_LAYERS,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    iresnet200,
)
from facelab.backbones.mbf import mbf, mbf_large
from facelab.backbones.mobilefacenet import mobilefacenet
from facelab.backbones.neck import FC_BN_MODES, Neck
from facelab.backbones.tiny import tiny
from facelab.errors import FacelabError

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "iresnet18": iresnet18,
    "iresnet34": iresnet34,
    "iresnet50": iresnet50,
    "iresnet100": iresnet100,
    "iresnet200": iresnet200,
    "mbf": mbf,
    "mbf_large": mbf_large,
    "mobilefacenet": mobilefacenet,
    "tiny": tiny,
    "dlib_resnet": dlib_resnet,
}
DEFAULT_INPUT_SIZE = 112
# native input height = width of the backbones that do not take 112x112 crops
INPUT_SIZES: dict[str, int] = {"dlib_resnet": DLIB_INPUT_SIZE}


def input_size(name: str) -> int:
    """Input height (= width) backbone `name` is built for; FacelabError for unknown names."""
    if name not in BACKBONES:
        raise FacelabError(f"unknown backbone {name!r}; choices: {', '.join(BACKBONES)}")
    return INPUT_SIZES.get(name, DEFAULT_INPUT_SIZE)


def build_backbone(name: str, embedding_size: int = 512, **kwargs: Any) -> nn.Module:
    """BACKBONES[name](embedding_size=..., **kwargs); unknown names or keyword arguments raise
    FacelabError."""
    check_backbone(name, embedding_size, **kwargs)
    return BACKBONES[name](embedding_size=embedding_size, **kwargs)


def check_backbone(name: str, embedding_size: int = 512, **kwargs: Any) -> None:
    """FacelabError for what `build_backbone` would refuse, without building the network."""
    if name not in BACKBONES:
        raise FacelabError(f"unknown backbone {name!r}; choices: {', '.join(BACKBONES)}")
    factory = BACKBONES[name]
    accepted = [p for p in inspect.signature(factory).parameters if p != "embedding_size"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise FacelabError(
            f"backbone {name!r} got unknown argument(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(accepted)}"
        )
    if (isinstance(embedding_size, bool) or not isinstance(embedding_size, int)
            or embedding_size < 1):
        raise FacelabError("backbone embedding_size must be a positive integer, got "
                           f"{embedding_size!r}")


__all__ = ["BACKBONES", "DEFAULT_INPUT_SIZE", "FC_BN_MODES", "INPUT_SIZES", "IRESNET_LAYERS",
           "Neck", "build_backbone", "check_backbone", "count_macs", "input_size"]
