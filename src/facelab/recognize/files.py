"""`facelab embed`: every face of many photo files -> one `.npz` of embeddings and a CSV index.

The `.npz` holds one row per face: `source` (the photo's path), `face` (its index in the photo,
0 = the main face), `box` [N, 4], `landmarks` [N, 5, 2], `score` [N], `embedding` [N, d]
(L2-normalised, flip-fused), and `model` (the recognizer's fingerprint, JSON). The CSV beside it
(same name, `.csv`) lists every photo: a row per face, a row for a photo without a face
(`status` "no face") and one for a photo that could not be read (`status` "unreadable: why").
Both files are written atomically, after the last photo: a killed run leaves no partial output.
"""

from collections import Counter
from pathlib import Path

import numpy as np

from facelab.errors import FacelabError
from facelab.io import IMAGE_SUFFIXES, check_writable, write_atomic, write_table
from facelab.jsonfile import strict_json
from facelab.recognize.recognizer import Recognizer

HEADER = ["source", "face", "status", "score", "x1", "y1", "x2", "y2"]


def photo_paths(inputs: list[Path]) -> list[Path]:
    """The photo files named by `inputs`: files as given, folders searched recursively for image
    suffixes (sorted). A missing path or a folder without photos is a FacelabError."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FacelabError(f"{item}: no photos in this folder ({sorted(IMAGE_SUFFIXES)})")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise FacelabError(f"{item}: no such file or folder")
    return paths


def check_output(out: Path) -> Path:
    """`out` as the .npz `embed_files` can write (suffix, writable folder), before any work."""
    out = Path(out)
    if out.suffix != ".npz":
        raise FacelabError(f"{out}: the output must be a .npz file")
    check_writable(out.parent)
    return out


def embed_files(rec: Recognizer, inputs: list[Path], out: Path, batch_size: int = 32) -> dict:
    """Embed every face of the photos `inputs` (files or folders) into `out` (.npz) and its CSV
    index (module docstring). Returns counts: photos, faces, no_face, several (photos with more
    than one face), and `unreadable`, the list of (photo, why)."""
    out = check_output(out)
    paths = photo_paths(inputs)
    rows, table, unreadable = [], [], []
    for name, faces in rec.embed_stream(paths, batch_size):
        if isinstance(faces, FacelabError):
            unreadable.append((name, str(faces)))
            table.append((name, None, f"unreadable: {faces}", None, None, None, None, None))
            continue
        if not faces:
            table.append((name, None, "no face", None, None, None, None, None))
        for i, face in enumerate(faces):
            rows.append((name, i, face))
            table.append((name, i, "ok", f"{face.score:.4f}", *(f"{v:.1f}" for v in face.box)))
    _write_npz(out, rows, rec)
    write_table(out.with_suffix(".csv"), HEADER, table)
    per_photo = Counter(name for name, _, _ in rows)  # faces of each photo with a face
    return {"photos": len(paths), "faces": len(rows), "unreadable": unreadable,
            "no_face": len(paths) - len(per_photo) - len(unreadable),
            "several": sum(n > 1 for n in per_photo.values())}


def _write_npz(out: Path, rows: list, rec: Recognizer) -> None:
    d = int(rec.fingerprint["embedding_size"])
    faces = [face for _, _, face in rows]
    arrays = {
        "source": np.array([name for name, _, _ in rows], dtype=str),
        "face": np.array([i for _, i, _ in rows], dtype=np.int64),
        "box": np.array([f.box for f in faces], np.float32).reshape(-1, 4),
        "landmarks": np.array([f.landmarks for f in faces], np.float32).reshape(-1, 5, 2),
        "score": np.array([f.score for f in faces], np.float32),
        "embedding": np.array([f.embedding for f in faces], np.float32).reshape(-1, d),
        "model": np.array(strict_json(rec.fingerprint, indent=None, sort_keys=True)),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomic(out, write)
