"""Enrol photos into a Gallery and identify the faces of photos against it (open set).

A probe face is the identity of its best gallery match when that match would pass verification:
squared L2 distance 2 - 2 cos below the model's threshold, i.e. cos > 1 - threshold / 2 (the
gallery scores a probe against each identity's template, the normalised mean of its embeddings).
Otherwise it is `unknown`: open-set identification rejects faces of people never enrolled
(Grother et al., NIST IR 8238, FPIR/FNIR).
"""

from pathlib import Path

import numpy as np

from facelab.errors import FacelabError
from facelab.recognize.gallery import Gallery
from facelab.recognize.photos import Photo, photo_name
from facelab.recognize.recognizer import Recognizer

UNKNOWN = "unknown"


def open_gallery(rec: Recognizer, folder: Path, create: bool) -> Gallery:
    """The gallery in `folder`, made by (or for) the recognizer's model."""
    return Gallery.open(folder, rec.fingerprint, create=create)


def enrol(rec: Recognizer, gallery: Gallery, name: str, photos: list[Photo]) -> dict:
    """Add the main face of each photo to identity `name`, all in one transaction: a photo that
    cannot be read or shows no face adds nothing at all. Returns {name, photos, several} (the
    photos that showed more than one face, of which the main one was kept)."""
    if not photos:
        raise FacelabError("gallery add: give at least one photo")
    items, several = [], []
    for i, (photo, faces) in enumerate(zip(photos, rec.embed_many(photos), strict=True)):
        where = photo_name(photo, i)
        if not faces:
            raise FacelabError(f"{where}: no face found; nothing was added to {name!r}")
        if len(faces) > 1:
            several.append(where)
        items.append((where, faces[0].embedding))
    gallery.add(name, items)
    return {"name": name, "photos": len(items), "several": several}


def identify(rec: Recognizer, gallery: Gallery, photos: list[Photo], top_k: int = 5
             ) -> list[dict]:
    """One record per face of each photo: photo, face (0 = main), box, identity (a name or
    `unknown`), score (cosine to the best identity, None for an empty gallery) and candidates
    [(name, cosine)] best first. A photo without a face gives one record with face None; an
    unreadable photo one with its `error`."""
    if top_k < 1:
        raise FacelabError(f"gallery identify: --top-k must be >= 1, got {top_k}")
    min_score = 1.0 - rec.require_threshold() / 2.0  # distance < T  <=>  cos > 1 - T / 2
    records = []
    for name, faces in rec.embed_stream(photos):
        if isinstance(faces, FacelabError):
            records.append({"photo": name, "face": None, "error": str(faces)})
            continue
        if not faces:
            records.append({"photo": name, "face": None, "identity": None, "score": None,
                            "candidates": []})
            continue
        found = gallery.search(np.stack([f.embedding for f in faces]), top_k)
        for i, (face, candidates) in enumerate(zip(faces, found, strict=True)):
            best = candidates[0] if candidates else None
            known = best is not None and best[1] > min_score
            records.append({
                "photo": name, "face": i, "box": [round(float(v), 1) for v in face.box],
                "identity": best[0] if known else UNKNOWN,
                "score": None if best is None else round(float(best[1]), 6),
                "candidates": [(n, round(float(s), 6)) for n, s in candidates],
            })
    return records
