"""The JSON forms of the service's answers, and the checks of what a request names.

Numbers are plain floats: an embedding's float32 values convert exactly, so a client reads the
Recognizer's own vector back. Coordinates are in pixels of the uploaded photo, upright (after
its EXIF orientation).
"""

import base64
import unicodedata

import numpy as np

from facelab.align.detect import Face
from facelab.io import encode_image
from facelab.recognize.identify import UNKNOWN
from facelab.serve.errors import ApiError
from facelab.serve.uploads import Upload

MAX_NAME = 100  # characters of an identity name
MAX_SOURCE = 200  # characters of a photo's name kept in the gallery
CROP_QUALITY = 90  # JPEG quality of the aligned crops handed back


def face_json(face: Face, embedding: bool = False, crop: bool = False) -> dict:
    """{box, score, landmarks} of a face, with its embedding and its aligned crop (a JPEG data
    URL) when asked."""
    out = {"box": [float(v) for v in face.box], "score": float(face.score),
           "landmarks": [[float(x), float(y)] for x, y in face.landmarks]}
    if embedding:
        out["embedding"] = [float(v) for v in face.embedding]
    if crop:
        jpeg = encode_image(face.crop, ".jpg", quality=CROP_QUALITY)
        out["crop"] = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    return out


def match_json(a: Face, b: Face, threshold: float) -> dict:
    """{score, distance, threshold, same} of two faces, computed as Recognizer.compare does:
    cosine and squared L2 distance 2 - 2 cos in float64, same when distance < threshold."""
    ea, eb = a.embedding.astype(np.float64), b.embedding.astype(np.float64)  # [d] each
    distance = float(np.sum(np.square(ea - eb)))
    return {"score": float(ea @ eb), "distance": distance, "threshold": threshold,
            "same": distance < threshold}


def identified_json(face: Face, candidates: list[tuple[str, float]], min_score: float) -> dict:
    """One face of /identify: its best identity when the cosine to that identity's template
    exceeds `min_score` (= 1 - threshold / 2, i.e. distance < threshold), else `unknown`."""
    best = candidates[0] if candidates else None
    known = best is not None and best[1] > min_score
    return {**face_json(face), "identity": best[0] if known else UNKNOWN,
            "similarity": None if best is None else float(best[1]),
            "candidates": [{"name": n, "score": float(s)} for n, s in candidates]}


def check_name(name: str, enrolling: bool = False) -> str:
    """An identity name as the service accepts it: 1-100 characters, not only spaces, no path
    separator or control character; `unknown` is /identify's answer for no one, so no identity
    may be enrolled under it. 400 otherwise."""
    if not name.strip():
        raise ApiError(400, "name: an identity name must not be empty")
    if len(name) > MAX_NAME:
        raise ApiError(400, f"name: longer than {MAX_NAME} characters ({len(name)})")
    if "/" in name or "\\" in name:
        raise ApiError(400, "name: must not hold a path separator (/ or \\)")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise ApiError(400, "name: must not hold control characters")
    if enrolling and name == UNKNOWN:
        raise ApiError(400, f"name: {UNKNOWN!r} is what /identify answers for no one; choose "
                       "another name")
    return name


def label(upload: Upload, index: int | None = None) -> str:
    """How messages name an uploaded photo: `images[2] (me.jpg)`."""
    field = upload.field if index is None else f"{upload.field}[{index}]"
    name = source_name(upload)
    return f"{field} ({name})" if name else field


def source_name(upload: Upload) -> str:
    """The client's file name of an upload, printable and short ("" for none): what the
    gallery records as the photo's source."""
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    return name[:MAX_SOURCE]
