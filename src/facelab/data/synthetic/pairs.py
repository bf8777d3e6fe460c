"""Verification pair sets of unseen synthetic identities, aligned 112x112 and stored as `.bin` +
`.csv`.

Like LFW's View 2: `pairs` pairs, interleaved (images 2i and 2i+1), in 10 contiguous folds of
pairs/10 pairs, half of them positive; the folds use disjoint identities, all from an index range no
training set reaches (>= FIRST_VERIFICATION_ID). Each identity gets PER_SIDE photos of the set's
left kind and PER_SIDE of its right kind; a pair always joins a left photo with a right photo:
  synth-lfw     mixed   vs mixed     (training conditions on both sides)
  synth-cfp     frontal vs profile   (|yaw| < 8 deg vs 62-82 deg)
  synth-lowres  mixed   vs lowres    (face width down-sampled to 5-9 px)
Photos are rendered, JPEG-compressed at their own quality, decoded and aligned from their landmarks.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from facelab.align import align_face
from facelab.data.pairsets import write_bin
from facelab.data.synthetic.identity import make_identity
from facelab.data.synthetic.nuisance import sample_nuisance
from facelab.data.synthetic.photo import encode_jpeg, render
from facelab.data.synthetic.pool import parallel_map
from facelab.io import decode_image, write_table

log = logging.getLogger(__name__)
PAIR_SETS = {  # name: (left kind, right kind, first identity index)
    "synth-lfw": ("mixed", "mixed", 10_000_000),
    "synth-cfp": ("frontal", "profile", 11_000_000),
    "synth-lowres": ("mixed", "lowres", 12_000_000),
}
FOLDS = 10
PER_SIDE = 2  # photos per identity and side
# positive pairs per identity: every left/right combination of its PER_SIDE x PER_SIDE photos
POS_PER_ID = 4
_COMBOS = ((0, 0), (1, 1), (0, 1), (1, 0))
ALIGNED = 112


def pair_rng(seed: int, index: int, side: int, j: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 2, int(side), int(j)])


Photo = tuple[int, int, int]  # (identity, side, j)


def plan_pairs(name: str, pairs: int, seed: int) -> list[tuple[int, bool, Photo, Photo]]:
    """[(fold, same, (identity, side, j) left, (identity, side, j) right)] of a set, fold by
    fold."""
    first = PAIR_SETS[name][2]
    rng = np.random.default_rng([int(seed), first, 3])
    half = pairs // (2 * FOLDS)
    n_ids = max(2, math.ceil(half / POS_PER_ID))
    plan = []
    for f in range(FOLDS):
        ids = first + f * n_ids + np.arange(n_ids)
        fold = []
        for k in range(half):
            i, j = _COMBOS[(k // n_ids) % len(_COMBOS)]
            idx = int(ids[k % n_ids])
            fold.append((f, True, (idx, 0, i), (idx, 1, j)))
        for _ in range(half):
            a, b = rng.choice(n_ids, 2, replace=False)
            i, j = rng.integers(PER_SIDE, size=2)
            fold.append((f, False, (int(ids[a]), 0, int(i)), (int(ids[b]), 1, int(j))))
        plan += [fold[i] for i in rng.permutation(len(fold))]
    return plan


def _render_group(job: tuple[int, int, list[tuple[int, int, str]]]
                  ) -> list[tuple[tuple, np.ndarray, dict]]:
    """Aligned photos of one identity: [((identity, side, j), aligned [112, 112, 3] uint8,
    attributes)]."""
    seed, index, photos = job
    ident = make_identity(seed, index)
    out = []
    for side, j, kind in photos:
        nuis = sample_nuisance(pair_rng(seed, index, side, j), kind)
        img, lm, _ = render(ident, nuis)
        photo = decode_image(encode_jpeg(img, nuis.jpeg), f"synthetic photo {index}/{side}/{j}")
        attrs = {"yaw_deg": round(math.degrees(nuis.yaw), 1),
                 "resolution": round(nuis.resolution, 1),
                 "occlusion": nuis.occlusion}
        out.append(((index, side, j), align_face(photo, lm, ALIGNED), attrs))
    return out


def _jobs(name: str, plan: list, seed: int) -> list[tuple[int, int, list[tuple[int, int, str]]]]:
    """One render job per identity of the set: (seed, identity, [(side, j, kind)])."""
    left, right, _ = PAIR_SETS[name]
    wanted: dict[int, set[tuple[int, int]]] = {}
    for _, _, a, b in plan:
        for idx, side, j in (a, b):
            wanted.setdefault(idx, set()).add((side, j))
    return [(seed, idx, [(s, j, (left, right)[s]) for s, j in sorted(v)])
            for idx, v in sorted(wanted.items())]


def _write_set(folder: Path, name: str, plan: list, photos: dict, attrs: dict) -> None:
    left, right, _ = PAIR_SETS[name]
    images = [photos[key] for _, _, a, b in plan for key in (a, b)]
    meta = {"template": "arcface112", "size": ALIGNED, "colour": "RGB",
            "source": f"facelab synth ({name})"}
    write_bin(folder / f"{name}.bin", images, [same for _, same, _, _ in plan], meta=meta)
    header = ["pair", "fold", "same", "left_identity", "left_photo", "right_identity",
              "right_photo", "left_kind", "right_kind", "left_yaw_deg", "right_yaw_deg",
              "left_resolution", "right_resolution", "left_occlusion", "right_occlusion"]
    rows = ([i, f, int(same), a[0], f"{left}{a[2]}", b[0], f"{right}{b[2]}", left, right,
             attrs[a]["yaw_deg"], attrs[b]["yaw_deg"], attrs[a]["resolution"],
             attrs[b]["resolution"], attrs[a]["occlusion"], attrs[b]["occlusion"]]
            for i, (f, same, a, b) in enumerate(plan))
    write_table(folder / f"{name}.csv", header, rows)


def write_pairsets(folder: Path, seed: int, pairs: int, workers: int) -> dict[str, int]:
    """Write every set of PAIR_SETS as folder/<name>.bin and folder/<name>.csv; returns pairs per
    set.

    The photos of all sets go through one pool; each set is written as soon as its last photo is
    back, while the workers go on with the next set.
    """
    plans = {name: plan_pairs(name, pairs, seed) for name in PAIR_SETS}
    jobs = {name: _jobs(name, plan, seed) for name, plan in plans.items()}
    owner = [name for name in PAIR_SETS for _ in jobs[name]]
    left = {name: len(jobs[name]) for name in PAIR_SETS}
    photos: dict[str, dict[tuple, np.ndarray]] = {name: {} for name in PAIR_SETS}
    attrs: dict[str, dict[tuple, dict]] = {name: {} for name in PAIR_SETS}
    everything = [job for name in PAIR_SETS for job in jobs[name]]
    for name, group in zip(owner, parallel_map(_render_group, everything, workers), strict=True):
        for key, img, at in group:
            photos[name][key], attrs[name][key] = img, at
        left[name] -= 1
        if not left[name]:
            _write_set(folder, name, plans[name], photos.pop(name), attrs[name])
            log.info("synth: %s, %d pairs of %d identities", name, len(plans[name]),
                     len(jobs[name]))
    return {name: len(plan) for name, plan in plans.items()}
