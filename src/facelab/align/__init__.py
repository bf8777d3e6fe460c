"""5-point face alignment (METHODS.md, Alignment).

The detector, facelab.align.detect (Face, detect_faces, rank_faces, main_face), is not re-exported
here: it imports torch and the MTCNN nets (~1.5 s), which the landmarks-file path of `facelab align`
and the data tools importing this package do not need; `import facelab.align` stays numpy + OpenCV.
"""

from facelab.align.template import ARCFACE_112, TEMPLATES, template_for
from facelab.align.umeyama import similarity_transform
from facelab.align.warp import align_face, check_landmarks

__all__ = ["ARCFACE_112", "TEMPLATES", "align_face", "check_landmarks", "similarity_transform",
           "template_for"]
