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

TEMPLATES: dict[str, tuple[np.ndarray, tuple[int, int]]] = {
    # name: (5×2 points, (width, height))
    "arcface112": (ARCFACE_112, (112, 112)),
    # the 96×112 (w×h) crop of SphereFace/CosFace is the same template 8 px further left
    "arcface96x112": (ARCFACE_112 - np.array([8.0, 0.0]), (96, 112)),
}


def template_for(name: str, size: int = 112) -> tuple[np.ndarray, tuple[int, int]]:
    """Template points and output (w, h) for `name`, scaled when `size` differs from 112
    (height)."""
    if name not in TEMPLATES:
        raise FacelabError(f"unknown alignment template {name!r}; choose one of "
                           f"{sorted(TEMPLATES)}")
    points, (w, h) = TEMPLATES[name]
    scale = size / 112.0
    return points * scale, (round(w * scale), round(h * scale))
