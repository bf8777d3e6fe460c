"""`run_synth`: write a synthetic face dataset (photos, landmarks, attributes, pair sets) to a
folder.

Layout of OUT:
  images/<identity>/<n>.jpg   unaligned photos (FRAME x FRAME, face somewhere in it), identities
                              0..N-1
  landmarks.csv               image,x1,y1,...,x5,y5 (left eye, right eye, nose tip, left/right mouth
                              corner): the file `facelab align` reads (facelab.align.folder.HEADER)
  attributes.csv              image, identity and every nuisance value of the photo
  pairs/<name>.bin, .csv      aligned 112x112 verification sets from identities >= 10_000_000
                              (pairs.py)
  synth.json                  parameters and counts, written last: its presence marks a complete
                              output
  label_noise.csv             only with label_noise > 0: the relabelled training photos (noise.py)
A run that finds a complete synth.json with the same parameters returns it without work; an output
left incomplete (marker `.synth-partial`, no synth.json) or made with other parameters is
regenerated.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np

from facelab.align.folder import HEADER
from facelab.data.synthetic.identity import make_identity
from facelab.data.synthetic.noise import NOISE_CSV, add_label_noise, check_label_noise
from facelab.data.synthetic.nuisance import FRAME, nuisance_row, sample_nuisance
from facelab.data.synthetic.pairs import PAIR_SETS, write_pairsets
from facelab.data.synthetic.photo import encode_jpeg, render
from facelab.data.synthetic.pool import parallel_map, pool_workers
from facelab.errors import FacelabError
from facelab.io import write_atomic, write_table
from facelab.jsonfile import strict_json

log = logging.getLogger(__name__)
# bump when the generator's output changes: a complete output of another version is regenerated
VERSION = 2
MANIFEST = "synth.json"
PARTIAL = ".synth-partial"
OWNED = ("images", "pairs", "landmarks.csv", "attributes.csv", MANIFEST, NOISE_CSV)
# training identities are 0..N-1 < this; verification ones start here
FIRST_VERIFICATION_ID = 10_000_000


def photo_rng(seed: int, index: int, n: int) -> np.random.Generator:
    """Generator of training photo n of identity `index` (independent of worker count and order)."""
    return np.random.default_rng([int(seed), int(index), 1, int(n)])


def _render_identities(job: tuple[Path, int, list[int], int, tuple[int, int]]
                       ) -> list[tuple[list, dict]]:
    """Render and write every photo of some identities; returns their (landmark row, attribute
    row)."""
    out, seed, indices, per_identity, (wi, wn) = job
    rows = []
    for index in indices:
        ident = make_identity(seed, index)
        folder = out / f"{index:0{wi}d}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_identity):
            nuis = sample_nuisance(photo_rng(seed, index, n), "mixed")
            img, lm, occ = render(ident, nuis)
            (folder / f"{n:0{wn}d}.jpg").write_bytes(encode_jpeg(img, nuis.jpeg))
            name = f"{index:0{wi}d}/{n:0{wn}d}.jpg"
            attrs = {"image": name, "identity": index, **nuisance_row(nuis),
                     "occlusion_frac": round(occ, 3)}
            rows.append(([name, *(f"{v:.3f}" for v in lm.reshape(-1))], attrs))
    return rows


def _check(identities: int, images_per_identity: int, seed: int, pairs: int,
           workers: int | None) -> None:
    def whole(name: str, v: object, lo: int) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise FacelabError(f"synth: {name} must be an integer >= {lo}, got {v!r}")

    whole("identities", identities, 1)
    whole("images_per_identity", images_per_identity, 1)
    whole("seed", seed, 0)
    whole("pairs", pairs, 0)
    if workers is not None:
        whole("workers", workers, 1)
    if identities >= FIRST_VERIFICATION_ID:
        raise FacelabError(f"synth: identities must be < {FIRST_VERIFICATION_ID} (verification "
                           f"identities start there), got {identities}")
    if pairs % 20:
        raise FacelabError(f"synth: pairs must be a multiple of 20 (10 folds, half positive), "
                           f"got {pairs}")


def _prepare(out: Path, params: dict) -> dict | None:
    """Return the manifest to reuse, or clear what an earlier run of ours left and mark the run
    partial."""
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("params") == params and not (out / PARTIAL).exists():
            return old
        log.info("%s: parameters changed, regenerating", out)
    elif out.is_dir() and any(out.iterdir()) and not (out / PARTIAL).exists():
        raise FacelabError(f"{out}: exists, is not empty and holds no {MANIFEST}: not a synthetic "
                           "dataset folder; choose a new or empty one")
    elif (out / PARTIAL).exists():
        log.info("%s: an earlier run did not finish, regenerating", out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTIAL).write_text("generation in progress; synth.json marks completion\n")
    for name in OWNED:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return None


def run_synth(out: Path, identities: int, images_per_identity: int, seed: int, pairs: int = 3000,
              workers: int | None = None, label_noise: float = 0.0) -> dict:
    """Generate (or reuse) the synthetic dataset described in the module docstring; returns the
    manifest."""
    _check(identities, images_per_identity, seed, pairs, workers)
    label_noise = check_label_noise(label_noise, identities)
    out = Path(out)
    params = {"version": VERSION, "identities": int(identities),
              "images_per_identity": int(images_per_identity), "seed": int(seed),
              "pairs": int(pairs), "frame": FRAME}
    if label_noise:  # absent at 0, so that a noise-free set keeps its earlier manifest
        params["label_noise"] = label_noise
    old = _prepare(out, params)
    if old is not None:
        log.info("%s: complete synthetic dataset with these parameters found, reusing it", out)
        return {**old, "reused": True}
    start = time.perf_counter()
    nw = pool_workers(workers)
    widths = (max(5, len(str(identities - 1))), max(2, len(str(images_per_identity - 1))))
    per_job = max(1, min(25, math.ceil(identities / (4 * nw))))
    jobs = [(out / "images", int(seed), list(range(i, min(i + per_job, identities))),
             int(images_per_identity), widths) for i in range(0, identities, per_job)]
    lms, attrs = [], []
    for k, rows in enumerate(parallel_map(_render_identities, jobs, nw)):
        for lm, at in rows:
            lms.append(lm)
            attrs.append(at)
        if (k + 1) % max(1, len(jobs) // 10) == 0:
            log.info("synth: %d/%d identities", min((k + 1) * per_job, identities), identities)
    t_images = time.perf_counter() - start
    noisy = add_label_noise(out, lms, attrs, label_noise, seed, identities) if label_noise else 0
    pair_counts = write_pairsets(out / "pairs", int(seed), int(pairs), nw) if pairs else {}
    write_table(out / "landmarks.csv", HEADER, lms)
    columns = list(attrs[0])
    write_table(out / "attributes.csv", columns, ([a[c] for c in columns] for a in attrs))
    manifest = {"format": "facelab-synthetic-faces", "params": params,
                "counts": {"identities": identities, "images": len(lms), "pairs": pair_counts,
                           **({"relabelled": noisy} if label_noise else {})},
                "pair_sets": {name: {"left": left, "right": right, "first_identity": first}
                              for name, (left, right, first) in PAIR_SETS.items()} if pairs else {},
                "seconds": {"images": round(t_images, 2),
                            "total": round(time.perf_counter() - start, 2)},
                "workers": nw}
    write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(strict_json(manifest, indent=1)))
    (out / PARTIAL).unlink(missing_ok=True)
    log.info("synth: %d photos of %d identities in %.1f s", len(lms), identities,
             time.perf_counter() - start)
    return {**manifest, "reused": False}
