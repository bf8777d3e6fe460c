"""Label noise for the synthetic training set (`facelab synth --label-noise P`).

A fraction P of the training photos (round(P·N) of N, chosen from the seed) is filed under a wrong
identity: the photo moves from images/<true>/<n>.jpg to images/<assigned>/<true>-<n>.jpg (a name
no clean photo has), its landmarks.csv and attributes.csv rows follow it (the attributes'
`identity` is the label as filed), and OUT/label_noise.csv records image (path as written),
true_identity, assigned_identity. The assigned identity is uniform over the other N_id - 1
identities. This is the noise Sub-center ArcFace's data cleaning (`facelab clean`) is meant to
find.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facelab.errors import FacelabError
from facelab.io import write_table

NOISE_CSV = "label_noise.csv"
NOISE_HEADER = ["image", "true_identity", "assigned_identity"]


def check_label_noise(fraction: object, identities: int) -> float:
    """The fraction as a float in [0, 1); a non-zero one needs at least 2 identities."""
    ok = isinstance(fraction, (int, float, np.floating)) and not isinstance(fraction, bool)
    if not ok or not 0.0 <= float(fraction) < 1.0:
        raise FacelabError(f"synth: label_noise must be a number in [0, 1), got {fraction!r}")
    if fraction and identities < 2:
        raise FacelabError(f"synth: label_noise={fraction} needs at least 2 identities, got "
                           f"{identities}")
    return float(fraction)


def noisy_assignment(seed: int, images: int, identities: int, truth: np.ndarray, fraction: float):
    """(indices [M] of the relabelled photos, sorted; their assigned identities [M]),
    M = round(fraction·images). truth [images] is each photo's identity; the assigned one is
    truth + U{1..identities-1} mod identities."""
    # photo generators use 4-word seeds: a 2-word seed is an independent stream
    rng = np.random.default_rng([int(seed), 2])
    count = int(round(fraction * images))
    picked = np.sort(rng.choice(images, size=count, replace=False))  # [M]
    shift = rng.integers(1, identities, size=count)  # [M], never 0: always another identity
    return picked, (truth[picked] + shift) % identities


def add_label_noise(out: Path, lms: list[list], attrs: list[dict], fraction: float, seed: int,
                    identities: int) -> int:
    """Move the chosen photos under out/images, update their `lms` and `attrs` rows in place and
    write out/label_noise.csv; returns the number of relabelled photos. `lms` rows start with the
    image path `<identity>/<n>.jpg`, in the same order as `attrs`."""
    truth = np.array([a["identity"] for a in attrs], dtype=np.int64)  # [N]
    picked, assigned = noisy_assignment(seed, len(attrs), identities, truth, fraction)
    width = len(lms[0][0].split("/")[0]) if lms else 5
    rows = []
    for i, new_id in zip(picked.tolist(), assigned.tolist(), strict=True):
        old = lms[i][0]
        folder, name = old.split("/")
        new = f"{new_id:0{width}d}/{folder}-{name}"
        (out / "images" / old).rename(out / "images" / new)
        lms[i][0] = attrs[i]["image"] = new
        attrs[i]["identity"] = new_id
        rows.append([new, int(truth[i]), new_id])
    write_table(out / NOISE_CSV, NOISE_HEADER, rows)
    return len(rows)
