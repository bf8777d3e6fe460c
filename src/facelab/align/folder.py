"""Align a whole folder of photos from a landmarks file (`facelab align`).

Every crop is written atomically (facelab.io.write_atomic) and `align.json` last, so a killed run
leaves whole crops and no `align.json`; running it again redoes the work and removes the temporaries
the killed run left (those of a live run are left alone, facelab.io.remove_stale_temps)."""

import csv
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from facelab.align.warp import align_face, check_landmarks
from facelab.errors import FacelabError
from facelab.images import decode_strict
from facelab.io import (
    IMAGE_SUFFIXES,
    check_writable,
    die_with_parent,
    encode_image,
    fork_safe_cv2,
    read_image_bytes,
    remove_stale_temps,
    write_atomic,
    write_skipped,
)
from facelab.jsonfile import strict_json

log = logging.getLogger(__name__)
HEADER = ["image", "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5"]
FACE = "face"  # optional last column: rank of the face in its photo, 0 = main (face_output_name)
FACE_HEADER = [*HEADER, FACE]
MANIFEST = "align.json"


def face_output_name(image: str, face: int) -> str:
    """Where the crop of face `face` (rank in its photo, 0 = main) of `image` goes, relative to the
    output folder: the photo's own name for the main face (as without a `face` column, so one-face
    outputs keep their names), `<stem>_face<k><suffix>` next to it for the others
    (a/b.jpg -> a/b.jpg, a/b_face1.jpg, a/b_face2.jpg: same folder and format, sorted together)."""
    if face == 0:
        return image
    path = PurePosixPath(image)
    return path.with_name(f"{path.stem}_face{face}{path.suffix}").as_posix()


def read_face_landmarks(path: Path) -> dict[tuple[str, int], np.ndarray]:
    """The landmarks file -> {(relative image path, face): [5, 2]}; empty fields become NaN
    (missing).

    Header `image,x1,y1,...,x5,y5` (one face per photo, face 0), or the same with a last column
    `face`: the rank of the face in its photo, 0 = main face (empty = 0), one row per face, as
    `facelab align --detector mtcnn --all-faces` writes it (facelab.align.detect).
    """
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise FacelabError(f"{path}: cannot read landmarks ({e.strerror})") from None
    header = [c.strip() for c in rows[0]] if rows else []
    if header not in (HEADER, FACE_HEADER):
        raise FacelabError(f"{path}: header must be {','.join(HEADER)} (optionally ,{FACE})")
    out = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise FacelabError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
        try:
            values = [float(v) if v.strip() else math.nan for v in row[1:11]]
        except ValueError:
            raise FacelabError(f"{path}:{line}: non-numeric landmark in {row[1:11]}") from None
        face = row[11].strip() if len(row) > 11 else ""
        if face and not (face.isascii() and face.isdigit()):
            raise FacelabError(f"{path}:{line}: {FACE} must be a whole number >= 0 (0 = the "
                               f"main face), got {face!r}")
        out[row[0], int(face or 0)] = np.array(values, dtype=np.float64).reshape(5, 2)
    return out


def read_landmarks(path: Path) -> dict[str, np.ndarray]:
    """The landmarks file -> {output name: [5, 2]} (face_output_name: the relative image path
    itself for a file without a `face` column); empty fields become NaN (missing)."""
    return {face_output_name(image, face): points
            for (image, face), points in read_face_landmarks(path).items()}


def _align_one(args: tuple[Path, Path, np.ndarray, int, str]) -> str | None:
    """Align one face of a photo; returns the reason it was skipped (bad landmarks; a photo that
    cannot be read or does not decode cleanly, facelab.images), or None."""
    cv2.setNumThreads(1)
    src, dst, landmarks, size, where = args
    try:
        pts = check_landmarks(landmarks, where=where)
        crop = align_face(_read_photo(src), pts, size=size)
    except FacelabError as e:
        return str(e)
    data = encode_image(crop, dst.suffix.lower() or ".jpg")
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dst, lambda tmp: tmp.write_bytes(data))
    return None


def _read_photo(path: Path) -> np.ndarray:
    return decode_strict(read_image_bytes(path), str(path))


def align_folder(src: Path, out: Path, landmarks: Path, size: int = 112,
                 workers: int | None = None, detection: dict | None = None) -> dict:
    """Align every face of `src` listed in `landmarks` into `out`: the main face (or only face) of
    a photo under its own relative path, the others under face_output_name (`a/b_face1.jpg`).

    Faces whose landmarks are missing, non-finite or degenerate, and photos that cannot be read or
    do not decode cleanly, are reported (log and `out/skipped.csv`, by output name) and skipped.
    `out` is checked writable first; `out/align.json` (the summary, with `detection` under that
    key when given: what facelab.align.detect.landmarks_for_folder found) is written last: its
    presence marks a complete output.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FacelabError(f"{src}: source folder does not exist")
    table = read_face_landmarks(landmarks)
    check_writable(out)
    remove_stale_temps(out, recursive=True)  # a killed run's half-written crops
    faces_of: dict[str, list[int]] = {}
    for name, face in sorted(table):
        faces_of.setdefault(name, []).append(face)
    for name in faces_of:
        if not (src / name).is_file():
            raise FacelabError(f"{landmarks}: image {name!r} not found under {src}")
    images = sorted(p.relative_to(src).as_posix() for p in src.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES)
    skipped = {name: "no landmarks in " + str(landmarks) for name in images
               if name not in faces_of}
    jobs, written = [], {}  # written: output name -> (image, face), to catch two faces on one file
    for name in (n for n in images if n in faces_of):
        for face in faces_of[name]:
            target = face_output_name(name, face)
            if target in written:
                other = written[target]
                raise FacelabError(f"{landmarks}: face {face} of {name!r} and face {other[1]} of "
                                   f"{other[0]!r} would both be written to {target!r}; rename "
                                   "one of the photos")
            written[target] = (name, face)
            where = str(src / name) + (f" (face {face})" if face else "")
            jobs.append((src / name, out / target, table[name, face], size, where))
    (out / MANIFEST).unlink(missing_ok=True)
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    if workers > 1:
        with fork_safe_cv2(), ProcessPoolExecutor(workers, initializer=die_with_parent) as pool:
            reasons = list(pool.map(_align_one, jobs, chunksize=64))
    else:
        reasons = [_align_one(j) for j in jobs]
    skipped.update({j[1].relative_to(out).as_posix(): r
                    for j, r in zip(jobs, reasons, strict=True) if r})
    for name, reason in sorted(skipped.items()):
        log.warning("skipped %s: %s", name, reason)
    write_skipped(out / "skipped.csv", "image", sorted(skipped.items()))
    aligned = len(jobs) - sum(r is not None for r in reasons)
    summary = {"aligned": aligned, "skipped": len(skipped), "size": size}
    if detection is not None:
        summary["detection"] = detection
    write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(strict_json(summary, indent=None)))
    return summary
