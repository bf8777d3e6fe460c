"""Align a whole folder of photos from a landmarks file (`facelab align`).

Every crop is written atomically (facelab.io.write_atomic) and `align.json` last, so a killed run
leaves whole crops and no `align.json`; running it again redoes the work and removes the temporaries
the killed run left (those of a live run are left alone, facelab.io.remove_stale_temps)."""

import csv
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

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
MANIFEST = "align.json"


def read_landmarks(path: Path) -> dict[str, np.ndarray]:
    """`image,x1,y1,...,x5,y5` rows -> {relative image path: [5, 2]}; empty fields become NaN
    (missing)."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise FacelabError(f"{path}: cannot read landmarks ({e.strerror})") from None
    if not rows or [c.strip() for c in rows[0]] != HEADER:
        raise FacelabError(f"{path}: header must be {','.join(HEADER)}")
    out = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(HEADER):
            raise FacelabError(f"{path}:{line}: expected {len(HEADER)} fields, got {len(row)}")
        try:
            values = [float(v) if v.strip() else math.nan for v in row[1:]]
        except ValueError:
            raise FacelabError(f"{path}:{line}: non-numeric landmark in {row[1:]}") from None
        out[row[0]] = np.array(values, dtype=np.float64).reshape(5, 2)
    return out


def _align_one(args: tuple[Path, Path, np.ndarray, int]) -> str | None:
    """Align one photo; returns the reason it was skipped (bad landmarks; a photo that cannot be
    read or does not decode cleanly, facelab.images), or None."""
    cv2.setNumThreads(1)
    src, dst, landmarks, size = args
    try:
        pts = check_landmarks(landmarks, where=str(src))
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
                 workers: int | None = None) -> dict:
    """Align every image of `src` listed in `landmarks` into `out` (same relative paths).

    Images whose landmarks are missing, non-finite or degenerate, and photos that cannot be read or
    do not decode cleanly, are reported (log and `out/skipped.csv`) and skipped. `out` is checked
    writable first; `out/align.json` is written last: its presence marks a complete output.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FacelabError(f"{src}: source folder does not exist")
    table = read_landmarks(landmarks)
    check_writable(out)
    remove_stale_temps(out, recursive=True)  # a killed run's half-written crops
    images = sorted(p.relative_to(src).as_posix() for p in src.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES)
    skipped = {name: "no landmarks in " + str(landmarks) for name in images if name not in table}
    for name in table:
        if not (src / name).is_file():
            raise FacelabError(f"{landmarks}: image {name!r} not found under {src}")
    jobs = [(src / n, out / n, table[n], size) for n in images if n in table]
    (out / MANIFEST).unlink(missing_ok=True)
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    if workers > 1:
        with fork_safe_cv2(), ProcessPoolExecutor(workers, initializer=die_with_parent) as pool:
            reasons = list(pool.map(_align_one, jobs, chunksize=64))
    else:
        reasons = [_align_one(j) for j in jobs]
    skipped.update({j[0].relative_to(src).as_posix(): r
                    for j, r in zip(jobs, reasons, strict=True) if r})
    for name, reason in sorted(skipped.items()):
        log.warning("skipped %s: %s", name, reason)
    write_skipped(out / "skipped.csv", "image", sorted(skipped.items()))
    aligned = len(jobs) - sum(r is not None for r in reasons)
    summary = {"aligned": aligned, "skipped": len(skipped), "size": size}
    write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(strict_json(summary, indent=None)))
    return summary

