"""Margin heads, one file per paper; `MARGINS` maps a registry key to its class."""

import inspect

from facelab.errors import FacelabError
from facelab.heads.margins.adacos import AdaCos
from facelab.heads.margins.adaface import AdaFace
from facelab.heads.margins.adam_softmax import AdaMSoftmax
from facelab.heads.margins.arcface import ArcFace
from facelab.heads.margins.base import Margin
from facelab.heads.margins.combined import Combined
from facelab.heads.margins.cosface import CosFace
from facelab.heads.margins.curricularface import CurricularFace
from facelab.heads.margins.elasticface import ElasticArcFace, ElasticCosFace
from facelab.heads.margins.magface import MagFace
from facelab.heads.margins.mv_softmax import MVAM, MVArc
from facelab.heads.margins.normface import NormFace
from facelab.heads.margins.softmax import Softmax
from facelab.heads.margins.sphereface import SphereFace
from facelab.heads.margins.subcenter_arcface import SubcenterArcFace

MARGINS: dict[str, type[Margin]] = {
    cls.name: cls
    for cls in (
        *(Softmax, NormFace, SphereFace, CosFace, ArcFace, Combined),
        *(AdaCos, AdaMSoftmax, MVAM, MVArc, CurricularFace, SubcenterArcFace),
        *(MagFace, ElasticArcFace, ElasticCosFace, AdaFace),
    )
}


def margin_parameters(name: str) -> list[str]:
    """The keyword arguments `MARGINS[name]` accepts."""
    return [p for p in inspect.signature(MARGINS[name].__init__).parameters if p != "self"]


def build_margin(name: str, **kwargs: object) -> Margin:
    """`MARGINS[name](**kwargs)`; an unknown name or parameter raises FacelabError listing the
    valid ones."""
    if not isinstance(name, str) or name not in MARGINS:
        raise FacelabError(f"unknown margin {name!r}; valid choices: {', '.join(sorted(MARGINS))}")
    valid = margin_parameters(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise FacelabError(
            f"unknown parameter {unknown[0]!r} for margin {name!r}; "
            f"valid parameters: {', '.join(valid) or '(none)'}"
        )
    return MARGINS[name](**kwargs)


__all__ = ["MARGINS", "Margin", "build_margin", "margin_parameters"]
