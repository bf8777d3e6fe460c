"""Photos in, answers out: Recognizer (detect, align, embed, compare) and the face Gallery."""

from facelab.align.detect import Face
from facelab.recognize.gallery import Gallery
from facelab.recognize.recognizer import Match, Recognizer

__all__ = ["Face", "Gallery", "Match", "Recognizer"]
