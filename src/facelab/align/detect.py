"""Find faces and their 5 landmarks with MTCNN; write the landmarks file `facelab align` reads.

The detector is optional: its weights come from `pip install --no-deps facenet-pytorch==2.6.0`
(see facelab.align.mtcnn); without it, a landmarks CSV from any other tool is the way in.
"""

import csv
import io
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from facelab.align.folder import HEADER
from facelab.align.mtcnn import cascade, weights_dir
from facelab.errors import FacelabError
from facelab.io import IMAGE_SUFFIXES, die_with_parent, read_image, write_atomic

log = logging.getLogger(__name__)
Face = tuple[np.ndarray, float, np.ndarray]  # box [4] (x1, y1, x2, y2), score, landmarks [5, 2]


def detect_faces(image: np.ndarray, min_face: float = 20.0) -> list[Face]:
    """All faces in an RGB uint8 [H, W, 3] image, best score first (MTCNN, Zhang et al. 2016).

    Landmarks: left eye, right eye, nose tip, left and right mouth corner, in image pixels
    (left = smaller x), the order of the alignment template.
    """
    if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3
            or image.shape[2] != 3):
        got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", "")
        raise FacelabError(f"detect_faces needs an RGB uint8 [H, W, 3] array, got {got[0]} "
                           f"{got[1]}")
    boxes, scores, points = cascade(np.ascontiguousarray(image), min_face=min_face)
    return [(b, float(s), p) for b, s, p in zip(boxes, scores, points, strict=True)]


def main_face(faces: list[Face], height: int, width: int) -> Face | None:
    """The face to keep when a photo shows several: largest and most central,
    i.e. maximal box area - 2 · (squared distance from box centre to image centre)."""
    if not faces:
        return None
    centre = np.array([width, height], dtype=np.float64) / 2

    def merit(face: Face) -> float:
        box = face[0]
        area = (box[2] - box[0]) * (box[3] - box[1])
        return float(area - 2 * ((((box[:2] + box[2:]) / 2) - centre) ** 2).sum())

    return max(faces, key=merit)


def _landmarks_of(path: Path) -> tuple[np.ndarray | None, str]:
    """[5, 2] landmarks of the main face of one photo, or (None, why not)."""
    try:
        image = read_image(path)
    except FacelabError as e:
        return None, str(e)
    faces = detect_faces(image)
    face = main_face(faces, *image.shape[:2])
    if face is None:
        return None, f"{path}: no face found"
    return face[2], f"{len(faces)} face(s)"


def _init_worker() -> None:
    die_with_parent()
    torch.set_num_threads(1)


def landmarks_for_folder(src: Path, out_csv: Path, workers: int | None = None) -> dict:
    """Detect the main face of every image under `src`; write `out_csv` (`image,x1,y1,...,x5,y5`,
    image paths relative to `src`), the file facelab.align.folder.align_folder reads.

    Images without a face (or unreadable) get empty fields: align_folder reports and skips them.
    Returns {"images": n, "faces": n with a face, "no_face": n without}.
    """
    src, out_csv = Path(src), Path(out_csv)
    if not src.is_dir():
        raise FacelabError(f"{src}: source folder does not exist")
    weights_dir()  # fail early, with the install command, when the weights are missing
    paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    workers = workers or min(len(paths), os.cpu_count() or 1) or 1
    if workers > 1:  # spawn: a forked torch may hang; one thread per worker
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            results = list(pool.map(_landmarks_of, paths, chunksize=8))
    else:
        results = [_landmarks_of(p) for p in paths]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for path, (points, note) in zip(paths, results, strict=True):
        name = path.relative_to(src).as_posix()
        if points is None:
            log.warning("no landmarks for %s: %s", name, note)
            writer.writerow([name] + [""] * 10)
        else:
            writer.writerow([name] + [f"{v:.3f}" for v in points.ravel()])  # x1, y1, ..., x5, y5
    write_atomic(out_csv, lambda tmp: tmp.write_text(buf.getvalue()))
    found = sum(points is not None for points, _ in results)
    summary = {"images": len(paths), "faces": found, "no_face": len(paths) - found}
    log.info("landmarks for %d of %d images written to %s", found, len(paths), out_csv)
    return summary
