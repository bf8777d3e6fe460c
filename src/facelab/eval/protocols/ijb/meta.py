"""IJB meta folder: `IJBMeta` and readers of insightface's `IJB_release` meta files.

The folder layout is in the package docstring (protocols/ijb/__init__.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelab.errors import FacelabError

log = logging.getLogger(__name__)

GALLERIES = {"ijbc": ("G1", "G2"), "ijbb": ("S1", "S2")}


@dataclass
class IJBMeta:
    """Everything in an IJB meta folder except the 1:N lists. Arrays are aligned with `names`."""

    root: Path  # the folder holding meta/ and loose_crop/
    prefix: str  # "ijbc" or "ijbb"
    names: np.ndarray  # [N] str, crop file names (relative to loose_crop/)
    templates: np.ndarray  # [N] int64
    medias: np.ndarray  # [N] int64
    landmarks: np.ndarray  # [N, 5, 2] float32, loose-crop pixel coordinates
    scores: np.ndarray  # [N] float32 detector (faceness) scores
    pairs: np.ndarray  # [P, 2] int64 template ids
    labels: np.ndarray  # [P] bool, True = same subject

    def meta_file(self, suffix: str) -> Path:
        return self.root / "meta" / f"{self.prefix}_{suffix}"


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of every non-blank line."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if fields:
                    yield lineno, fields
    except OSError as e:
        raise FacelabError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise FacelabError(f"{path}: not a UTF-8 text file") from None


def _int(value: str, path: Path, lineno: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FacelabError(f"{path}:{lineno}: {what} must be an integer, got {value!r}") from None


def read_face_tid_mid(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<p>_face_tid_mid.txt` -> (names [N] str, template ids [N] int64, media ids [N] int64)."""
    path = Path(path)
    names, tids, mids = [], [], []
    for lineno, f in _lines(path):
        if len(f) != 3:
            raise FacelabError(
                f"{path}:{lineno}: expected 'image_name template_id media_id', got {len(f)} fields"
            )
        names.append(f[0])
        tids.append(_int(f[1], path, lineno, "template_id"))
        mids.append(_int(f[2], path, lineno, "media_id"))
    if not names:
        raise FacelabError(f"{path}: no lines")
    return np.array(names), np.array(tids, dtype=np.int64), np.array(mids, dtype=np.int64)


def _scan_pairs(path: Path) -> np.ndarray:
    """Slow line-by-line reading of a pair file; raises FacelabError at the first bad line."""
    rows = []
    for lineno, f in _lines(path):
        if len(f) != 3:
            raise FacelabError(
                f"{path}:{lineno}: expected 'template_id_1 template_id_2 label', "
                f"got {len(f)} fields"
            )
        row = [
            _int(v, path, lineno, w)
            for v, w in zip(f, ("template_id_1", "template_id_2", "label"), strict=True)
        ]
        if row[2] not in (0, 1):
            raise FacelabError(f"{path}:{lineno}: label must be 0 or 1, got {row[2]}")
        rows.append(row)
    if not rows:
        raise FacelabError(f"{path}: no pairs")
    return np.array(rows, dtype=np.int64)


def read_template_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`<p>_template_pair_label.txt` -> (pairs [P, 2] int64 template ids, labels [P] bool).

    The IJB-C file has 15.7 M lines: numpy's C reader first; the slow scan only to name a bad line.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # "input contained no data": reported below
            warnings.simplefilter("ignore", UserWarning)
            rows = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None)
    except OSError as e:
        raise FacelabError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError:
        rows = _scan_pairs(path)  # raises at the bad line
    if rows.shape[0] == 0 or rows.shape[1] != 3 or not np.isin(rows[:, 2], (0, 1)).all():
        rows = _scan_pairs(path)
    return rows[:, :2].copy(), rows[:, 2].astype(bool)


def read_5pts_score(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<p>_name_5pts_score.txt` -> (names [N], landmarks float32 [N, 5, 2], detector scores
    float32 [N])."""
    path = Path(path)
    names, values = [], []
    for lineno, f in _lines(path):
        if len(f) != 12:
            raise FacelabError(
                f"{path}:{lineno}: expected 'image_name x1 y1 ... x5 y5 score' (12 fields), "
                f"got {len(f)}"
            )
        try:
            row = [float(v) for v in f[1:]]
        except ValueError:
            raise FacelabError(
                f"{path}:{lineno}: landmarks and score must be numbers, got {f[1:]}"
            ) from None
        if not np.isfinite(row).all():
            raise FacelabError(f"{path}:{lineno}: non-finite landmark or score {f[1:]}")
        names.append(f[0])
        values.append(row)
    if not names:
        raise FacelabError(f"{path}: no lines")
    arr = np.array(values, dtype=np.float32)  # [N, 11]
    return np.array(names), arr[:, :10].reshape(-1, 5, 2), arr[:, 10].copy()


def _prefix(root: Path, dataset: str | None) -> str:
    if dataset is not None:
        prefix = dataset.lower().replace("-", "")
        if prefix not in GALLERIES:
            raise FacelabError(f"IJB dataset must be IJBB or IJBC, got {dataset!r}")
        return prefix
    found = sorted(
        p.name[: -len("_face_tid_mid.txt")] for p in (root / "meta").glob("*_face_tid_mid.txt")
    )
    if len(found) != 1:
        raise FacelabError(
            f"{root / 'meta'}: expected one *_face_tid_mid.txt, found {found or 'none'}"
        )
    return found[0]


def _reorder(names: np.ndarray, ref: np.ndarray, path: Path) -> np.ndarray:
    """Index into `names` giving the order of `ref` (two files listing the crops in two orders)."""
    if len(np.unique(names)) != len(names):
        raise FacelabError(
            f"{path}: image names repeat and the order differs from the face_tid_mid file"
        )
    order = np.argsort(names)
    pos = np.searchsorted(names, ref, sorter=order).clip(0, len(names) - 1)
    idx = order[pos]
    missing = names[idx] != ref
    if missing.any() or len(names) != len(ref):
        first = ref[missing][0] if missing.any() else "(counts differ)"
        raise FacelabError(
            f"{path}: lists {len(names)} crops, face_tid_mid {len(ref)}; first unmatched: {first}"
        )
    return idx


def read_ijb_meta(root: Path, dataset: str | None = None) -> IJBMeta:
    """Read the 1:1 meta files of an IJB folder (`root` holds meta/ and loose_crop/)."""
    root = Path(root)
    if not (root / "meta").is_dir():
        raise FacelabError(
            f"{root}: no meta/ folder (expected an insightface IJB_release IJBB or IJBC folder)"
        )
    prefix = _prefix(root, dataset)
    names, templates, medias = read_face_tid_mid(root / "meta" / f"{prefix}_face_tid_mid.txt")
    lm_path = root / "meta" / f"{prefix}_name_5pts_score.txt"
    lm_names, landmarks, scores = read_5pts_score(lm_path)
    if not np.array_equal(lm_names, names):
        idx = _reorder(lm_names, names, lm_path)
        landmarks, scores = landmarks[idx], scores[idx]
    pairs, labels = read_template_pairs(root / "meta" / f"{prefix}_template_pair_label.txt")
    log.info(
        "%s: %d crops, %d templates, %d pairs (%d same)",
        root,
        len(names),
        len(np.unique(templates)),
        len(pairs),
        int(labels.sum()),
    )
    return IJBMeta(root, prefix, names, templates, medias, landmarks, scores, pairs, labels)
