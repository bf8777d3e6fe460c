"""Warp a photo to the aligned crop from its 5 landmarks."""

import cv2
import numpy as np

from facelab.align.template import template_for
from facelab.align.umeyama import similarity_transform
from facelab.errors import FacelabError


def check_landmarks(landmarks: np.ndarray, where: str = "landmarks") -> np.ndarray:
    """Return landmarks as float64 [5, 2]; raise FacelabError when missing, non-finite or
    degenerate."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise FacelabError(f"{where}: expected 5 (x, y) points, got shape {pts.shape}")
    if np.isnan(pts).all():
        raise FacelabError(f"{where}: no landmarks (no face found)")
    if not np.isfinite(pts).all():
        raise FacelabError(f"{where}: non-finite landmark coordinates {pts.tolist()}")
    # degenerate: all points (nearly) coincide or the eyes coincide -> no defined scale/rotation
    spread = np.sqrt(((pts - pts.mean(0)) ** 2).sum(1).mean())
    eye_dist = np.linalg.norm(pts[1] - pts[0])
    if spread < 1e-3 or eye_dist < 1e-3:
        raise FacelabError(f"{where}: degenerate landmarks (points coincide) {pts.tolist()}")
    return pts


def align_face(
    image: np.ndarray, landmarks: np.ndarray, size: int = 112, template: str = "arcface112"
) -> np.ndarray:
    """Aligned crop [size, w, 3] of `image` (H×W×3 uint8, any colour order: it is kept).

    Similarity from the 5 landmarks to the template (Umeyama, no reflection), bilinear warp,
    black border (METHODS.md, Alignment).
    """
    pts = check_landmarks(landmarks)
    dst, (w, h) = template_for(template, size)
    matrix = similarity_transform(pts, dst)
    return cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
