"""Alignment templates: where the 5 landmarks land in the aligned crop (METHODS.md, Alignment).

Order: left eye, right eye, nose tip, left mouth corner, right mouth corner (image coordinates).
"""

import numpy as np

from facelab.errors import FacelabError

# The standard ArcFace 112×112 template.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]],
    dtype=np.float64,
)

# dlib's face chips (`get_face_chip(image, shape, size=150, padding=0.25)`, the input of its
# face-recognition ResNet) in facelab's MTCNN points: MTCNN's landmarks mapped through dlib's own
# chip transform (its 5-point shape predictor's mean-face fit), averaged over frontal photos
# (scikit-image astronaut, matplotlib grace_hopper; mirrored, scaled 0.6 / 1.5, rotated ±15°)
# and made left-right symmetric about the chip centre 74.5. Per photo the mapped points lie 1.7-3.9
# px (mean over the 5) from these; see tests/interop/test_dlib.py.
DLIB_150 = np.array(
    [[46.97, 45.60], [102.03, 45.60], [74.50, 77.77], [48.50, 96.84], [100.50, 96.84]],
    dtype=np.float64,
)

TEMPLATES: dict[str, tuple[np.ndarray, tuple[int, int]]] = {
    # name: (5×2 points, (width, height)) at the template's native size
    "arcface112": (ARCFACE_112, (112, 112)),
    # the 96×112 (w×h) crop of SphereFace/CosFace is the same template 8 px further left
    "arcface96x112": (ARCFACE_112 - np.array([8.0, 0.0]), (96, 112)),
    "dlib150": (DLIB_150, (150, 150)),
}


def template_for(name: str, size: int = 112) -> tuple[np.ndarray, tuple[int, int]]:
    """Template points and output (w, h) for `name`, scaled by `size` / the template's native
    height (112 for the arcface templates, 150 for dlib150), so `size` is the crop's height."""
    if name not in TEMPLATES:
        raise FacelabError(f"unknown alignment template {name!r}; choose one of "
                           f"{sorted(TEMPLATES)}")
    points, (w, h) = TEMPLATES[name]
    scale = size / float(h)
    return points * scale, (round(w * scale), round(h * scale))
