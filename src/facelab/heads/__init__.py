"""Classification heads: the classifier (class centres -> Cosines), margins (MARGINS) and
FaceHead."""

from facelab.heads.classifier import Classifier
from facelab.heads.cosines import Cosines
from facelab.heads.head import FaceHead, build_head
from facelab.heads.margins import MARGINS, Margin, build_margin

__all__ = ["MARGINS", "Classifier", "Cosines", "FaceHead", "Margin", "build_head", "build_margin"]
