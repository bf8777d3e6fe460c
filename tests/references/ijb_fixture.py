"""Write a small IJB-format folder (insightface `IJB_release` layout) from aligned crops.

For tests and bench/.

Each aligned crop is pasted into a larger "loose crop" by a random similarity (scale, rotation,
shift) and saved as JPEG; its 5 landmarks are the alignment template carried by the same similarity,
so aligning the loose crop with them gives the crop back (up to interpolation and JPEG). Each
subject's images are dealt round-robin into `templates_per_subject` templates; within a template,
consecutive images share a media (`media_size` at a time, like frames of one video). 1:1 pairs:
every pair of templates (label = same subject). 1:N: each subject's first template is its gallery
template (subjects alternate between G1 and G2; IJB-B: S1, S2), every other template is a probe
(`<p>_1N_probe_mixed.csv`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from facelab.align import template_for
from facelab.errors import FacelabError
from facelab.io import encode_image, write_atomic

CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT"


def _loose(crop: np.ndarray, rng: np.random.Generator, size: int, points: np.ndarray):
    """Paste `crop` into a size x size canvas by a random similarity.

    Returns (canvas, landmarks [5, 2]).
    """
    h, w = crop.shape[:2]
    scale = rng.uniform(0.9, 1.25) * size / (1.5 * max(h, w))
    angle = rng.uniform(-0.25, 0.25)  # radians
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    centre = np.array([w, h]) / 2.0
    shift = np.array([size, size]) / 2.0 + rng.uniform(-0.08, 0.08, 2) * size - rot @ centre
    matrix = np.hstack([rot, shift[:, None]])  # [2, 3] crop -> canvas
    canvas = cv2.warpAffine(
        crop, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return canvas, points @ rot.T + shift


def _write_text(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _templates(identities: np.ndarray, per_subject: int, media_size: int):
    """Per image: (template id, media id); and {template id: subject}.

    Ids from 1 in subject order.
    """
    tids = np.zeros(len(identities), dtype=np.int64)
    mids = np.zeros(len(identities), dtype=np.int64)
    subject_of: dict[int, int] = {}
    next_t, next_m = 1, 1
    for subject in np.unique(identities):
        idx = np.flatnonzero(identities == subject)
        for k in range(min(per_subject, len(idx))):
            members = idx[k::per_subject]
            tids[members] = next_t
            mids[members] = next_m + np.arange(len(members)) // media_size
            next_m = int(mids[members].max()) + 1
            subject_of[next_t] = int(subject)
            next_t += 1
    return tids, mids, subject_of


def _csv_rows(tids, subject_of, wanted, boxes) -> list[str]:
    rows = [CSV_HEADER]
    for i, t in enumerate(tids):
        if int(t) in wanted:
            x, y, bw, bh = boxes[i]
            rows.append(f"{t},{subject_of[int(t)]},img/{i + 1}.jpg,{x},{y},{bw},{bh}")
    return rows


def write_ijb_fixture(
    root: Path,
    images: np.ndarray | Sequence[np.ndarray],
    identities: Sequence[int],
    dataset: str = "IJBC",
    templates_per_subject: int = 3,
    media_size: int = 2,
    loose_size: int = 160,
    template: str = "arcface112",
    seed: int = 0,
) -> Path:
    """Write `root/meta/*` and `root/loose_crop/<i>.jpg` from aligned RGB crops [N, H, W, 3].

    Returns root.
    """
    root = Path(root)
    prefix = dataset.lower().replace("-", "")
    galleries = {"ijbc": ("G1", "G2"), "ijbb": ("S1", "S2")}.get(prefix)
    if galleries is None:
        raise FacelabError(f"IJB fixture: dataset must be IJBB or IJBC, got {dataset!r}")
    identities = np.asarray(identities)
    if len(images) != len(identities) or len(images) == 0:
        raise FacelabError(f"IJB fixture: {len(images)} images for {len(identities)} identities")
    if templates_per_subject < 1 or media_size < 1:
        raise FacelabError("IJB fixture: templates_per_subject and media_size must be >= 1")
    rng = np.random.default_rng(seed)
    points, _ = template_for(template, np.asarray(images[0]).shape[0])
    tids, mids, subject_of = _templates(identities, templates_per_subject, media_size)
    lm_lines, boxes = [], []
    for i, crop in enumerate(images):
        canvas, lm = _loose(np.ascontiguousarray(crop, dtype=np.uint8), rng, loose_size, points)
        data = encode_image(canvas, ".jpg", 95)
        write_atomic(root / "loose_crop" / f"{i + 1}.jpg", lambda tmp, d=data: tmp.write_bytes(d))
        score = rng.uniform(0.6, 1.0)
        lm_lines.append(
            f"{i + 1}.jpg " + " ".join(f"{v:.3f}" for v in lm.ravel()) + f" {score:.3f}"
        )
        lo, hi = lm.min(0), lm.max(0)
        boxes.append((int(lo[0]), int(lo[1]), int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1))
    meta = root / "meta"
    _write_text(meta / f"{prefix}_name_5pts_score.txt", lm_lines)
    _write_text(
        meta / f"{prefix}_face_tid_mid.txt",
        [f"{i + 1}.jpg {t} {mids[i]}" for i, t in enumerate(tids)],
    )
    ts = sorted(subject_of)
    pairs = [
        f"{a} {b} {int(subject_of[a] == subject_of[b])}"
        for k, a in enumerate(ts)
        for b in ts[k + 1 :]
    ]
    _write_text(meta / f"{prefix}_template_pair_label.txt", pairs)
    first = {}
    for t in ts:
        first.setdefault(subject_of[t], t)
    subjects = sorted(first)
    for g, name in enumerate(galleries):
        wanted = {first[s] for s in subjects[g::2]}
        _write_text(
            meta / f"{prefix}_1N_gallery_{name}.csv", _csv_rows(tids, subject_of, wanted, boxes)
        )
    probes = set(ts) - set(first.values())
    _write_text(meta / f"{prefix}_1N_probe_mixed.csv", _csv_rows(tids, subject_of, probes, boxes))
    return root
