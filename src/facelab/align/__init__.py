"""5-point face alignment (METHODS.md, Alignment)."""

from facelab.align.template import ARCFACE_112, TEMPLATES, template_for
from facelab.align.umeyama import similarity_transform
from facelab.align.warp import align_face, check_landmarks

__all__ = ["ARCFACE_112", "TEMPLATES", "align_face", "check_landmarks", "similarity_transform",
           "template_for"]
