"""What every claim of `facelab experiment claims` shares: the run context, the result record, the
decision rule fixed before running, held-out photos of training identities and their embeddings.

A claim module defines `measure(ctx: Context) -> Result`. It trains with
facelab.experiments.common.train_once under `ctx.root / <claim>` (a finished run is read back, not
retrained), measures, and returns the figures, the verdict and its plots (PNG files it wrote
under `ctx.figures`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from facelab.errors import FacelabError
from facelab.eval.embed import embed_raw
from facelab.experiments.common import prepare_synth
from facelab.io import read_image, write_atomic
from facelab.model import load_model

VERDICTS = ("shown", "not shown", "inconclusive")
MIN_SEEDS = 3
RULE = ("shown when the mean difference over >= 3 seeds, in the claimed direction, exceeds "
        "twice the pooled seed standard deviation (sample std, ddof 1, of each side, pooled); "
        "not shown when the difference is zero or in the other direction; inconclusive in "
        "between, or with fewer than 3 seeds")


@dataclass(frozen=True)
class Context:
    """Where a claim trains and writes, and its budget.

    root: runs of every claim (`root/<claim>/...`); data: synthetic sets (`data/<name>`);
    figures: PNG plots, beside the report; quick: the smoke-test budget (a few steps, tiny data,
    fewer seeds); seeds: the seeds of every comparison; scale: multiplies every training budget (10
    on a GPU); overrides: dotted config overrides for every run (device, threads).
    """

    root: Path
    data: Path
    figures: Path
    quick: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    scale: float = 1.0
    overrides: tuple[str, ...] = ()

    def steps(self, full: int) -> int:
        """A training budget: `full` steps times `scale`, or 3 steps when quick."""
        return 3 if self.quick else max(1, round(full * self.scale))

    def size(self, full: int, quick: int) -> int:
        """A data size (identities, photos, pairs): `quick` when quick, else `full`."""
        return quick if self.quick else full

    def run_overrides(self, steps: int, batch_size: int) -> list[str]:
        """Overrides every claim run takes: budget, batch, quiet logging, then `overrides`."""
        return [f"train.steps={steps}", f"data.batch_size={batch_size}",
                f"schedule.warmup_steps={steps // 12}",
                f"train.checkpoint_every={steps}", "train.progress=false",
                "train.tensorboard=false", *self.overrides]


@dataclass
class Result:
    """One claim's section of docs/claims.md.

    paper: the paper's statement with its table or figure; measurement: what the code measures;
    rule: the decision rule, fixed before running; table: markdown figures with their spread;
    figures: [(PNG path, caption)]; seconds: wall time of the call that trained the claim's runs
    (its measurement included); trained: how many runs that call trained.
    """

    name: str
    title: str
    paper: str
    measurement: str
    rule: str
    table: str
    verdict: str
    figures: list[tuple[str, str]] = field(default_factory=list)
    notes: str = ""
    seconds: float = 0.0
    trained: int = 0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise FacelabError(f"claim {self.name}: verdict {self.verdict!r} is not one of "
                               f"{', '.join(VERDICTS)}")


def seed_rule(claimed: Sequence[float], other: Sequence[float]) -> tuple[str, str]:
    """RULE on per-seed values where the claim says `claimed` > `other`: (verdict, "Δ = ... vs
    2·s_p = ..., n seeds"). Values are paired by seed but the rule compares the two means."""
    a, b = np.asarray(claimed, np.float64), np.asarray(other, np.float64)
    if len(a) == 0 or len(b) == 0:
        raise FacelabError("seed_rule: needs values on both sides")
    diff = float(a.mean() - b.mean())
    n = min(len(a), len(b))
    if n < 2:
        return "inconclusive", f"Δ = {diff:+.4g}, one seed"
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2.0)
    text = f"Δ = {diff:+.4g} vs 2·s_p = {2 * pooled:.4g}, {n} seeds"
    if not (math.isfinite(diff) and math.isfinite(pooled)):  # a NaN measurement decides nothing
        return "inconclusive", text
    if diff <= 0:
        return "not shown", text
    if n < MIN_SEEDS or diff <= 2 * pooled:
        return "inconclusive", text
    return "shown", text


def paired_rule(claimed: Sequence[float], other: Sequence[float]) -> tuple[str, str]:
    """The RULE on per-seed differences d = claimed - other of two measurements on the same seed
    that share that seed's noise (pairs_vs_classification: the same replayed partition of the
    identities): shown when mean(d) exceeds twice the std of d (ddof 1) over >= 3 seeds, not
    shown when mean(d) <= 0, else inconclusive."""
    d = np.subtract(claimed, other)  # [seeds]
    mean = float(d.mean())
    if len(d) < 2:
        return "inconclusive", f"Δ = {mean:+.4g}, one seed"
    spread = 2 * float(d.std(ddof=1))
    text = f"Δ = {mean:+.4g} vs 2·s_d = {spread:.4g}, {len(d)} seeds, paired"
    if mean <= 0:
        return "not shown", text
    return ("shown" if len(d) >= MIN_SEEDS and mean > spread else "inconclusive"), text


def overall(verdicts: Sequence[str]) -> str:
    """One verdict of several comparisons that together make a claim: shown when all are, not shown
    when any is not, inconclusive otherwise."""
    if not verdicts:
        raise FacelabError("overall: no verdicts")
    if all(v == "shown" for v in verdicts):
        return "shown"
    return "not shown" if "not shown" in verdicts else "inconclusive"


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """"mean ± std" (sample std, ddof 1) of per-seed values; the value alone for one seed."""
    v = np.asarray(values, np.float64)
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


@dataclass(frozen=True)
class Split:
    """A synthetic set whose identities are split photo-wise: training list and held-out photos.

    train: file list (list.txt format) of the training photos; val_pairs: the generator's pair sets
    (identities never trained on); held_out: [(aligned photo path, identity)];
    attributes: {column: np.ndarray} of the held-out photos, in held_out order (the generator's
    nuisance values: yaw_deg, resolution, blur, light, ...).
    """

    train: Path
    val_pairs: list[str]
    held_out: list[tuple[Path, int]]
    attributes: dict[str, np.ndarray]


def synth_split(ctx: Context, name: str, identities: int, images: int, held_out: int,
                pairs: int, label_noise: float = 0.0) -> Split:
    """A synthetic set of `identities` x `images` photos in `ctx.data / name`, the last `held_out`
    photos of every identity kept out of training (made once, reused)."""
    if not 0 < held_out < images:
        raise FacelabError(f"synth_split: held_out={held_out} must be in (0, {images})")
    folder = ctx.data / name
    aligned, sets = prepare_synth(folder, identities, images, pairs, label_noise=label_noise)
    train_rows, held = [], []
    for ident in sorted(p for p in aligned.iterdir() if p.is_dir()):
        photos = sorted(ident.glob("*.jpg"))
        label = int(ident.name)
        train_rows += [f"{ident.name}/{p.name} {label}" for p in photos[:-held_out]]
        held += [(p, label) for p in photos[-held_out:]]
    listing = aligned / f"train-holdout{held_out}.txt"
    text = "\n".join(train_rows) + "\n"
    if not listing.exists() or listing.read_text() != text:
        write_atomic(listing, lambda tmp: tmp.write_text(text))
    return Split(listing, sets, held, _attributes(folder / "attributes.csv", held, aligned))


def _attributes(path: Path, held: list[tuple[Path, int]], aligned: Path) -> dict[str, np.ndarray]:
    """The attributes.csv rows of the held-out photos (numeric columns only), in their order."""
    with path.open(newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    wanted = [rows[p.relative_to(aligned).as_posix()] for p, _ in held]
    out = {}
    for key in wanted[0]:
        try:
            out[key] = np.array([float(r[key]) for r in wanted])
        except ValueError:  # text columns (image, occlusion)
            continue
    return out


def embed_held_out(run: Path, photos: Sequence[Path], batch_size: int = 256
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised embeddings [N, d], feature norms |f(x)| [N]) of aligned photos, by the model
    of a run folder, without flip (MagFace / AdaFace read the norm of f(x) itself)."""
    model, pre = load_model(run)
    images = np.stack([read_image(p) for p in photos])  # [N, H, W, 3] uint8 RGB
    feats, _ = embed_raw(model, images, batch_size=batch_size, flip=False, preprocess=pre)
    norms = np.linalg.norm(feats, axis=1)  # [N]
    return (feats / np.maximum(norms, 1e-12)[:, None]).astype(np.float32), norms


def train_minutes(runs: Sequence[Path]) -> float:
    """Training minutes of finished runs, summed: train.steps x data.batch_size / images per
    second of each run's metrics.json (every session of a resumed run, machine load included)."""
    total = 0.0
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())["train"]
        batch = yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"]
        total += metrics["steps"] * batch / metrics["images_per_second"]
    return total / 60.0
