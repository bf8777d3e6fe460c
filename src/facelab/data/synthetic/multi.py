"""`run_multi_synth`: several training sets drawn from ONE identity pool, with overlap and a domain
shift each: the test bed of multi-dataset training (DAIL, Wang et al., "Dataset-aware and invariant
learning for face recognition", ICPR 2020, arXiv 2101.05419).

Dataset 0 ("A") holds pool identities 0..N-1 as classes 0..N-1. Every later dataset k holds N
classes: round(overlap·N) of them are identities of A (drawn at random) and the rest are new pool
identities; the classes are shuffled, so a shared person has another class id in each dataset.
Photos of one person in two datasets are different draws. Domains (DOMAINS, cycled over the
datasets):
  hires_colour   the generator's "mixed" photos, never down-sampled
  dark_lowres    light and ambient x0.7, face down-sampled to 16-32 px, yaw x1.6 (more profile),
                 colour mostly washed out (70% towards grey)
Layout of OUT:
  <name>/images/<class>/<n>.jpg, <name>/landmarks.csv, <name>/attributes.csv
                                  as run_synth (align with `facelab align OUT/<name>/images
                                  OUT/<name>/aligned --landmarks ...`)
  pairs/synth-lfw|cfp|lowres.bin  the usual verification sets, made once (identities >= 10_000_000)
  overlap.csv                     ground truth: a_dataset,a_class,b_dataset,b_class,pool_identity
  multi.json                      parameters and counts, written last (a complete output is reused)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np

from facelab.align.folder import HEADER
from facelab.data.synthetic.dataset import VERSION, _check
from facelab.data.synthetic.identity import make_identity
from facelab.data.synthetic.nuisance import FRAME, Nuisance, nuisance_row, sample_nuisance
from facelab.data.synthetic.pairs import write_pairsets
from facelab.data.synthetic.photo import encode_jpeg, render
from facelab.data.synthetic.pool import parallel_map, pool_workers
from facelab.errors import FacelabError
from facelab.io import write_atomic, write_table
from facelab.jsonfile import strict_json

log = logging.getLogger(__name__)
MANIFEST = "multi.json"
DOMAINS = ("hires_colour", "dark_lowres")
NAMES = "ABCDEFGH"


def shift_nuisance(n: Nuisance, domain: str, rng: np.random.Generator) -> Nuisance:
    """The photo conditions of `domain` from a "mixed" draw."""
    if domain == "hires_colour":
        return dataclasses.replace(n, resolution=n.face_px)
    yaw = float(np.clip(1.6 * n.yaw, -math.radians(75), math.radians(75)))
    return dataclasses.replace(n, light=0.7 * n.light, ambient=0.7 * n.ambient, yaw=yaw,
                               resolution=float(min(n.face_px, rng.uniform(16, 32))))


def shift_image(img: np.ndarray, domain: str) -> np.ndarray:
    """Colour treatment of `domain` on an RGB uint8 photo [H, W, 3]."""
    if domain == "hires_colour":
        return img
    grey = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # [H, W]
    return np.clip(0.3 * img + 0.7 * grey[..., None], 0, 255).astype(np.uint8)


def plan_datasets(count: int, identities: int, overlap: float, seed: int) -> list[list[int]]:
    """Pool identity of every class of every dataset: [dataset][class] -> pool id."""
    rng = np.random.default_rng([seed, 77])
    plans = [list(range(identities))]
    shared = round(overlap * identities)
    for k in range(1, count):
        first_new = identities + (k - 1) * (identities - shared)
        pool = [int(i) for i in rng.choice(identities, shared, replace=False)]
        pool += list(range(first_new, first_new + identities - shared))
        plans.append([pool[i] for i in rng.permutation(identities)])
    return plans


def _render_classes(job: tuple) -> list[tuple[list, dict]]:
    """Render and write every photo of some classes of one dataset; returns (landmark row,
    attribute row)s."""
    out, seed, d, domain, classes, per_identity, (wi, wn) = job
    rows = []
    for cls, pool_id in classes:
        ident = make_identity(seed, pool_id)
        (out / f"{cls:0{wi}d}").mkdir(parents=True, exist_ok=True)
        for n in range(per_identity):
            # own photos per dataset
            rng = np.random.default_rng([int(seed), int(pool_id), 1, n, 100 + d])
            nuis = shift_nuisance(sample_nuisance(rng, "mixed"), domain, rng)
            img, lm, occ = render(ident, nuis)
            name = f"{cls:0{wi}d}/{n:0{wn}d}.jpg"
            (out / name).write_bytes(encode_jpeg(shift_image(img, domain), nuis.jpeg))
            attrs = {"image": name, "identity": cls, "pool_identity": pool_id, "domain": domain,
                     **nuisance_row(nuis), "occlusion_frac": round(occ, 3)}
            rows.append(([name, *(f"{v:.3f}" for v in lm.reshape(-1))], attrs))
    return rows


def _write_dataset(folder: Path, seed: int, d: int, plan: list[int], per_identity: int,
                   workers: int) -> int:
    widths = (max(5, len(str(len(plan) - 1))), max(2, len(str(per_identity - 1))))
    domain = DOMAINS[d % len(DOMAINS)]
    per_job = max(1, min(25, math.ceil(len(plan) / (4 * workers))))
    items = list(enumerate(plan))
    jobs = [(folder / "images", seed, d, domain, items[i : i + per_job], per_identity, widths)
            for i in range(0, len(items), per_job)]
    lms, attrs = [], []
    for rows in parallel_map(_render_classes, jobs, workers):
        lms += [lm for lm, _ in rows]
        attrs += [a for _, a in rows]
    write_table(folder / "landmarks.csv", HEADER, lms)
    columns = list(attrs[0])
    write_table(folder / "attributes.csv", columns, ([a[c] for c in columns] for a in attrs))
    return len(lms)


def overlap_rows(plans: list[list[int]], names: list[str]) -> list[list]:
    """Ground truth: one row per class of dataset k > 0 that is a class of A:
    (A, a_class, k, b_class, pool), classes as their folder names."""
    width = max(5, len(str(len(plans[0]) - 1)))
    where_a = {pool: f"{c:0{width}d}" for c, pool in enumerate(plans[0])}
    return [[names[0], where_a[pool], names[k], f"{c:0{width}d}", pool]
            for k in range(1, len(plans)) for c, pool in enumerate(plans[k]) if pool in where_a]


def run_multi_synth(out: Path, datasets: int, identities: int, images_per_identity: int,
                    overlap: float, seed: int = 0, pairs: int = 3000,
                    workers: int | None = None) -> dict:
    """Generate (or reuse) the multi-dataset output described in the module docstring; returns the
    manifest."""
    _check(identities, images_per_identity, seed, pairs, workers)
    if (isinstance(datasets, bool) or not isinstance(datasets, int)
            or not 2 <= datasets <= len(NAMES)):
        raise FacelabError(f"synth: datasets must be an integer in [2, {len(NAMES)}], got "
                           f"{datasets!r}")
    if not 0.0 <= overlap <= 1.0:
        raise FacelabError(f"synth: overlap must be a fraction in [0, 1], got {overlap!r}")
    out = Path(out)
    params = {"version": VERSION, "datasets": datasets, "identities": identities,
              "overlap": float(overlap), "images_per_identity": images_per_identity, "seed": seed,
              "pairs": pairs, "frame": FRAME}
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("params") == params:
        log.info("%s: complete multi-dataset output with these parameters found, reusing it", out)
        return json.loads(manifest_path.read_text())
    if out.is_dir() and any(out.iterdir()) and not manifest_path.is_file():
        raise FacelabError(f"{out}: exists, is not empty and holds no {MANIFEST}; choose a new or "
                           "empty folder")
    manifest_path.unlink(missing_ok=True)
    nw = pool_workers(workers)
    names = list(NAMES[:datasets])
    plans = plan_datasets(datasets, identities, overlap, seed)
    counts = {}
    for d, (name, plan) in enumerate(zip(names, plans, strict=True)):
        shutil.rmtree(out / name, ignore_errors=True)
        counts[name] = _write_dataset(out / name, seed, d, plan, images_per_identity, nw)
        log.info("synth: dataset %s (%s): %d photos", name, DOMAINS[d % len(DOMAINS)], counts[name])
    pair_counts = write_pairsets(out / "pairs", seed, pairs, nw) if pairs else {}
    truth = overlap_rows(plans, names)
    columns = ["a_dataset", "a_class", "b_dataset", "b_class", "pool_identity"]
    write_table(out / "overlap.csv", columns, truth)
    manifest = {"format": "facelab-synthetic-multi", "params": params, "names": names,
                "domains": {n: DOMAINS[d % len(DOMAINS)] for d, n in enumerate(names)},
                "counts": {"images": counts, "shared_identities": len(truth), "pairs": pair_counts}}
    write_atomic(manifest_path, lambda tmp: tmp.write_text(strict_json(manifest, indent=1)))
    return manifest
