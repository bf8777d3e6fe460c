"""Find faces and their 5 landmarks with MTCNN (Face, detect_faces, main face first by
face_merit); write the landmarks file `facelab align` reads (landmarks_for_folder).

The detector is optional: its weights come from `pip install --no-deps facenet-pytorch==2.6.0`
(see facelab.align.mtcnn); without it, a landmarks CSV from any other tool is the way in.
"""

import csv
import io
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facelab.align.folder import FACE_HEADER, HEADER
from facelab.align.mtcnn import cascade, weights_dir
from facelab.errors import FacelabError
from facelab.io import IMAGE_SUFFIXES, die_with_parent, read_image, write_atomic

log = logging.getLogger(__name__)
CENTRALITY = 0.5  # weight of the distance to the image centre in the merit (face_merit)


@dataclass(eq=False)  # arrays inside: compare faces by identity, not by (ambiguous) value
class Face:
    """One face found in a photo (MTCNN, Zhang et al. 2016): its box, the detector's confidence and
    the 5 landmarks the alignment template uses; `crop` and `embedding` are left empty here and
    filled by facelab.recognize.

    Landmarks: left eye, right eye, nose tip, left and right mouth corner, in image pixels
    (left = smaller x in the image), the order of facelab.align.template.
    """

    box: np.ndarray  # float [4] x1, y1, x2, y2 in image pixels
    score: float  # detector confidence in [0, 1]
    landmarks: np.ndarray  # float [5, 2]: left eye, right eye, nose, left/right mouth corner
    crop: np.ndarray | None = None  # aligned uint8 [h, w, 3], filled by facelab.recognize
    embedding: np.ndarray | None = None  # L2-normalised float32 [d], filled by facelab.recognize


def detect_faces(image: np.ndarray, min_face: float = 20.0) -> list[Face]:
    """All faces in an RGB uint8 [H, W, 3] image, main face first (MTCNN, Zhang et al. 2016).

    The order is that of rank_faces (face_merit: confident, large, then central), so
    `detect_faces(image)[0]` is the face to keep when a photo stands for one person.
    """
    if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3
            or image.shape[2] != 3):
        got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", "")
        raise FacelabError(f"detect_faces needs an RGB uint8 [H, W, 3] array, got {got[0]} "
                           f"{got[1]}")
    # boxes [F, 4], scores [F], points [F, 5, 2], best score first
    boxes, scores, points = cascade(np.ascontiguousarray(image), min_face=min_face)
    faces = [Face(b, float(s), p) for b, s, p in zip(boxes, scores, points, strict=True)]
    return rank_faces(faces, *image.shape[:2])


def face_merit(face: Face, height: int, width: int) -> float:
    """How much `face` looks like the subject of a `height` × `width` photo:

        score · sqrt(area) · (1 - CENTRALITY · d / (half diagonal)),

    d the distance from the box centre to the image centre. Why each factor:
    - sqrt(area), the box side, grows with the face's resolution (eye distance) and is linear in
      it, so a face twice as wide counts twice, not four times (an area would drown the rest);
    - the score (MTCNN's O-Net probability, >= 0.7 after its threshold) down-weights the small
      false detections (texture, a patch of fabric) that a real photo also gives;
    - centrality is a mild factor in [1 - CENTRALITY, 1] = [0.5, 1]: between two faces of the same
      size and score the central one wins, but a face in the corner still beats a central one
      less than half its width. A merit such as area - 2 · d² is dominated by d²: it picks a
      26-px false detection near the centre over the 105-px face of a photo turned by 60°.
    """
    box = np.asarray(face.box, dtype=np.float64)  # [4]
    side = np.sqrt(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))
    centre = np.array([width, height], dtype=np.float64) / 2  # [2] x, y
    dist = float(np.linalg.norm((box[:2] + box[2:]) / 2 - centre))
    half_diagonal = max(float(np.linalg.norm(centre)), 1e-9)
    return float(face.score * side * (1 - CENTRALITY * min(dist / half_diagonal, 1.0)))


def rank_faces(faces: list[Face], height: int, width: int) -> list[Face]:
    """`faces` of a `height` × `width` photo, highest face_merit first (ties keep their order)."""
    if height <= 0 or width <= 0:
        raise FacelabError(f"rank_faces needs the photo's size, got {height} × {width}")
    return sorted(faces, key=lambda face: -face_merit(face, height, width))


def main_face(faces: list[Face], height: int, width: int) -> Face | None:
    """The face to keep when a `height` × `width` photo shows several (the first of rank_faces),
    or None for no face."""
    return rank_faces(faces, height, width)[0] if faces else None


def _landmarks_of(path: Path) -> tuple[list[np.ndarray], str]:
    """[5, 2] landmarks of every face of one photo, main face first; ([], why not) when none."""
    try:
        image = read_image(path)
    except FacelabError as e:
        return [], str(e)
    faces = detect_faces(image)
    if not faces:
        return [], f"{path}: no face found"
    return [face.landmarks for face in faces], f"{len(faces)} face(s)"


def _init_worker() -> None:
    die_with_parent()
    torch.set_num_threads(1)


def landmarks_for_folder(src: Path, out_csv: Path, workers: int | None = None,
                         all_faces: bool = False) -> dict:
    """Detect the faces of every image under `src`; write `out_csv`, the file
    facelab.align.folder.align_folder reads (image paths relative to `src`).

    Without `all_faces`: `image,x1,y1,...,x5,y5`, one row per photo, its main face (rank_faces),
    the format any other tool can write too. With `all_faces`: the same columns and a last one,
    `face`, one row per face, 0 = main face then by merit (align_folder writes face k > 0 to
    `<stem>_face<k><suffix>`, facelab.align.folder.face_output_name).
    Images without a face (or unreadable) get one row with empty fields: align_folder reports and
    skips them.

    Returns {"images": n, "faces": photos with a face, "no_face": photos without, "several": photos
    with more than one face, "kept": faces written (= "faces" without `all_faces`),
    "all_faces": all_faces}.
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
    writer.writerow(FACE_HEADER if all_faces else HEADER)
    kept = 0
    for path, (faces, note) in zip(paths, results, strict=True):  # faces: [5, 2] each, main first
        name = path.relative_to(src).as_posix()
        if not faces:
            log.warning("no landmarks for %s: %s", name, note)
            writer.writerow([name] + [""] * 10 + ([0] if all_faces else []))
            continue
        if len(faces) > 1:
            log.debug("%s shows %d faces", name, len(faces))
        for rank, points in enumerate(faces if all_faces else faces[:1]):
            # x1, y1, ..., x5, y5
            writer.writerow([name] + [f"{v:.3f}" for v in points.ravel()]
                            + ([rank] if all_faces else []))
            kept += 1
    write_atomic(out_csv, lambda tmp: tmp.write_text(buf.getvalue()))
    found = sum(bool(faces) for faces, _ in results)
    several = sum(len(faces) > 1 for faces, _ in results)
    summary = {"images": len(paths), "faces": found, "no_face": len(paths) - found,
               "several": several, "kept": kept, "all_faces": all_faces}
    log.info("landmarks of %d face(s) in %d of %d images written to %s; %d image(s) show several "
             "faces", kept, found, len(paths), out_csv, several)
    return summary
