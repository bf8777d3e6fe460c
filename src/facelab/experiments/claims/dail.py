"""Claim `dail`: Wang et al., "Dataset-aware and invariant learning for face recognition", ICPR 2020
(arXiv 2101.05419), Sec. 3 and Fig. 1-2: merging face datasets naively makes a person present in
both two classes, each the other's negative; the dataset-aware softmax (each sample's softmax over
its own dataset's classes) removes that conflict, crossing dropout lets a few other-dataset classes
back in, and the dataset classifier behind a gradient reversal layer (GRL, stage 2) makes the
embedding dataset-invariant.

Measured on facelab.data.synthetic.multi: three datasets from one identity pool, A (high-res
colour), B (dark, low-res, more yaw: the domain-shifted partner) and C (drawn like A: the
same-domain partner); B and C share 0%, 30% or 60% of their identities with A under other class
ids.
Each run trains A + one partner (experiments/dail.py's variants and overrides) and is measured by
(a) the centre cosine of shared identities: cos between the classifier rows of the same person in A
    and in the partner (the mechanism: the naive merge pushes them apart);
(b) cross-dataset verification: ROC-AUC of the cosines of held-out photos of the shared persons, a
    photo from A against one from the partner (same person: positive; two shared persons: negative);
(c) dataset separability: 2-fold cross-validated accuracy of a logistic regression telling A's
    held-out embeddings from the partner's (the GRL's aim: lower).
"""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

from facelab.align.folder import MANIFEST, align_folder
from facelab.data.synthetic.multi import run_multi_synth
from facelab.eval.reports.plots import save_figure
from facelab.experiments import dail as dail_experiment
from facelab.experiments.claims import CLAIMS
from facelab.experiments.claims.base import (
    RULE,
    Context,
    Result,
    embed_held_out,
    mean_std,
    overall,
    seed_rule,
)
from facelab.experiments.common import RECIPE, train_once
from facelab.io import write_atomic
from facelab.jsonfile import strict_json
from facelab.model import load_checkpoint

log = logging.getLogger(__name__)
NAME = "dail"
OVERLAPS = (0.0, 0.3, 0.6)  # 0% has no shared identity: only (c) is defined there
PARTNER = {"shifted": "B", "same": "C"}  # multi-synth DOMAINS cycle: A, C hires colour; B dark
# our variant -> experiments/dail.py's variant prefix (its overrides, reused as they are)
VARIANTS = {"naive": "b-merge", "aware": "c-aware", "crossing": "d-crossing", "grl": "e-grl"}
FULL_CELL = ("shifted", 0.6)  # every variant; other cells: naive vs aware (budget)
CROSSING, GRL_WEIGHT = 0.02, 0.1  # experiments/dail.py's defaults
STEPS, BATCH = 300, 48
MODEL = ["model.kwargs={width: 16}"]


@dataclass(frozen=True)
class Pair:
    """A and one partner dataset, split photo-wise. train: (list file of A, of the partner);
    held: ([(aligned photo, class)] of A, of the partner); shared: [(class in A, class in the
    partner)] of the persons in both; classes: N, classes per dataset."""

    train: tuple[Path, Path]
    held: tuple[list[tuple[Path, int]], list[tuple[Path, int]]]
    shared: list[tuple[int, int]]
    classes: int


def centre_cosines(weight: np.ndarray, shared: np.ndarray, classes: int) -> np.ndarray:
    """Cosines [S] between the class centres of each shared person: weight [2N, d] (A's classes,
    then the partner's: the union's offsets), shared [S, 2] (class in A, class in the partner)."""
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)  # [2N, d]
    return np.sum(w[shared[:, 0]] * w[classes + shared[:, 1]], axis=1)  # [S]


def other_cosines(weight: np.ndarray, shared: np.ndarray, classes: int) -> np.ndarray:
    """Cosines between A's and the partner's centres of DIFFERENT persons (the scale (a) is read
    against): every (A class, partner class) pair not in `shared`, flattened."""
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)  # [2N, d]
    cos = w[:classes] @ w[classes:].T  # [N, N]
    same = np.zeros_like(cos, dtype=bool)
    same[shared[:, 0], shared[:, 1]] = True
    # a person new to the partner is nobody in A: every entry but the shared ones is a negative
    return cos[~same]


def cross_pairs(labels_a: np.ndarray, labels_b: np.ndarray, shared: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (photo of A, photo of the partner) of two shared persons: (i [P], j [P], same [P]).
    labels_a [Na], labels_b [Nb]: class ids in their own dataset; shared [S, 2]."""
    person_a = dict(zip(shared[:, 0].tolist(), range(len(shared)), strict=True))
    person_b = dict(zip(shared[:, 1].tolist(), range(len(shared)), strict=True))
    pa = np.array([person_a.get(int(c), -1) for c in labels_a])  # [Na] person or -1
    pb = np.array([person_b.get(int(c), -1) for c in labels_b])  # [Nb]
    i, j = np.meshgrid(np.flatnonzero(pa >= 0), np.flatnonzero(pb >= 0), indexing="ij")
    i, j = i.ravel(), j.ravel()
    return i, j, pa[i] == pb[j]


def cross_auc(emb_a: np.ndarray, labels_a: np.ndarray, emb_b: np.ndarray, labels_b: np.ndarray,
              shared: np.ndarray) -> float:
    """ROC-AUC of cosine scores over cross_pairs (positives: same person); embeddings [N, d]
    L2-normalised."""
    i, j, same = cross_pairs(labels_a, labels_b, shared)
    scores = np.sum(emb_a[i] * emb_b[j], axis=1)  # [P]
    return float(roc_auc_score(same, scores))


def dataset_accuracy(emb: np.ndarray, dataset: np.ndarray, seed: int = 0) -> float:
    """Mean 2-fold cross-validated accuracy of a logistic regression predicting the dataset [M]
    (0/1) of an embedding [M, d] (stratified folds, shuffled with `seed`)."""
    folds = StratifiedKFold(2, shuffle=True, random_state=seed)
    scores = cross_val_score(LogisticRegression(max_iter=2000), emb, dataset, cv=folds)
    return float(np.mean(scores))


def measure_run(run: Path, pair: Pair) -> dict[str, float]:
    """(a), (b), (c) of one finished run on `pair`."""
    weight = load_checkpoint(run)["head"]["classifier.weight"].double().numpy()  # [2N, d]
    shared = np.asarray(pair.shared, dtype=np.int64).reshape(-1, 2)  # [S, 2]
    held_a, held_b = pair.held
    emb, _ = embed_held_out(run, [p for p, _ in held_a] + [p for p, _ in held_b])  # [Na + Nb, d]
    na = len(held_a)
    dataset = np.repeat([0, 1], [na, len(held_b)])
    if len(shared) == 0:  # 0% overlap: nobody to compare across the datasets
        nan = float("nan")
        return {"centre": nan, "centre_other": nan, "auc": nan,
                "dataset_acc": dataset_accuracy(emb, dataset)}
    labels_a = np.array([c for _, c in held_a])
    labels_b = np.array([c for _, c in held_b])
    return {"centre": float(centre_cosines(weight, shared, pair.classes).mean()),
            "centre_other": float(other_cosines(weight, shared, pair.classes).mean()),
            "auc": cross_auc(emb[:na], labels_a, emb[na:], labels_b, shared),
            "dataset_acc": dataset_accuracy(emb, dataset)}


def _holdout(aligned: Path, held_out: int) -> tuple[Path, list[tuple[Path, int]]]:
    """A file list of all but the last `held_out` photos of every class (label = class folder
    number) in `aligned`, and those held-out photos."""
    rows, held = [], []
    for folder in sorted(p for p in aligned.iterdir() if p.is_dir()):
        photos, label = sorted(folder.glob("*.jpg")), int(folder.name)
        rows += [f"{folder.name}/{p.name} {label}" for p in photos[:-held_out]]
        held += [(p, label) for p in photos[-held_out:]]
    listing = aligned / f"train-holdout{held_out}.txt"
    text = "\n".join(rows) + "\n"
    if not listing.exists() or listing.read_text() != text:
        write_atomic(listing, lambda tmp: tmp.write_text(text))
    return listing, held


def _shared(path: Path) -> dict[str, list[tuple[int, int]]]:
    """{partner name: [(class in A, class in partner)]} from the multi-synth's overlap.csv."""
    out: dict[str, list[tuple[int, int]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["b_dataset"], []).append((int(row["a_class"]),
                                                         int(row["b_class"])))
    return out


def overlaps(ctx: Context) -> tuple[float, ...]:
    """OVERLAPS; the FULL_CELL's alone when quick (the smoke test's time)."""
    return (FULL_CELL[1],) if ctx.quick else OVERLAPS


def prepare(ctx: Context, overlap: float, identities: int, images: int,
            held_out: int) -> dict[str, Pair]:
    """{domain: Pair} of one multi-synth output (A, B, C) at `overlap`, made and aligned once."""
    root = ctx.data / f"dail-{identities}x{images}-overlap{round(100 * overlap)}"
    workers = 1 if ctx.quick else None  # a process pool costs more than a tiny set's rendering
    manifest = run_multi_synth(root, 3, identities, images, overlap, seed=0, pairs=0,
                               workers=workers)
    source = strict_json(manifest["params"], indent=None)
    lists, held = {}, {}
    for name in manifest["names"]:
        aligned = root / name / "aligned"
        if not (aligned / MANIFEST).exists() or not _same_text(aligned / "source.json", source):
            shutil.rmtree(aligned, ignore_errors=True)
            align_folder(root / name / "images", aligned, root / name / "landmarks.csv",
                         workers=workers)
            write_atomic(aligned / "source.json", lambda tmp: tmp.write_text(source))
        lists[name], held[name] = _holdout(aligned, held_out)
    shared = _shared(root / "overlap.csv")
    return {domain: Pair((lists["A"], lists[b]), (held["A"], held[b]), shared.get(b, []),
                         identities) for domain, b in PARTNER.items()}


def _same_text(path: Path, text: str) -> bool:
    return path.exists() and path.read_text() == text


def plan(ctx: Context) -> dict[tuple[str, float], tuple[tuple[str, ...], tuple[int, ...]]]:
    """{(domain, overlap): (variants, seeds)}: every variant at FULL_CELL, naive vs aware
    elsewhere (the budget); every seed everywhere."""
    cells = {}
    for domain in PARTNER:
        for overlap in overlaps(ctx):
            full = (domain, overlap) == FULL_CELL
            cells[(domain, overlap)] = (tuple(VARIANTS) if full else ("naive", "aware"),
                                        ctx.seeds)
    return cells


def train_and_measure(ctx: Context, pairs: dict[float, dict[str, Pair]]
                      ) -> dict[tuple[str, float, str], list[dict[str, float]]]:
    """{(domain, overlap, variant): [measures per seed]}; runs in ctx.root/dail/<cell>-<variant>."""
    steps = ctx.steps(STEPS)
    batch = ctx.size(BATCH, 8)
    out: dict[tuple[str, float, str], list[dict[str, float]]] = {}
    for (domain, overlap), (variants, seeds) in plan(ctx).items():
        pair = pairs[overlap][domain]
        tag = f"{round(100 * overlap)}%"
        grid = dail_experiment.variants({overlap: pair.train}, steps, CROSSING, GRL_WEIGHT)
        for variant in variants:
            for seed in seeds:
                run = ctx.root / NAME / f"{domain}{round(100 * overlap)}-{variant}" / f"seed{seed}"
                overrides = [*grid[f"{VARIANTS[variant]}-{tag}"], *MODEL,
                             *ctx.run_overrides(steps, batch), f"seed={seed}"]
                train_once(RECIPE, overrides, run)
                out.setdefault((domain, overlap, variant), []).append(measure_run(run, pair))
    return out


def _values(results: dict, key: tuple[str, float, str], field: str) -> list[float]:
    return [m[field] for m in results.get(key, [])]


def table(results: dict) -> str:
    """Markdown: one row per (domain, overlap, variant), mean ± std over its seeds."""
    head = ("| pair | overlap | variant | seeds | (a) centre cos, shared | centre cos, other "
            "persons | (b) cross-dataset AUC | (c) dataset-classifier acc |")
    rows = [head, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (domain, overlap, variant), runs in results.items():
        key = (domain, overlap, variant)
        cells = [_cell(_values(results, key, f)) for f in
                 ("centre", "centre_other", "auc", "dataset_acc")]
        rows.append(f"| A + {PARTNER[domain]} ({domain}) | {round(100 * overlap)}% | {variant} | "
                    f"{len(runs)} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(values: list[float]) -> str:
    """mean ± std, or "—" where the measure is undefined (no shared person at 0% overlap)."""
    return "—" if all(np.isnan(values)) else mean_std(values)


def decide(results: dict) -> tuple[str, list[str]]:
    """(verdict, rule lines): (a) aware > naive and (c) GRL < no GRL at FULL_CELL decide; (b)
    aware > naive per cell is reported with its rule outcome."""
    domain, overlap = FULL_CELL
    va, ta = seed_rule(_values(results, (domain, overlap, "aware"), "centre"),
                       _values(results, (domain, overlap, "naive"), "centre"))
    vc, tc = seed_rule(_values(results, (domain, overlap, "crossing"), "dataset_acc"),
                       _values(results, (domain, overlap, "grl"), "dataset_acc"))
    lines = [f"(a) centre cos, aware > naive ({domain}, {round(100 * overlap)}%): {va} ({ta})",
             f"(c) dataset-classifier acc, GRL < no GRL (+crossing) ({domain}, "
             f"{round(100 * overlap)}%): {vc} ({tc})"]
    for d, o, v in results:
        if v == "aware" and o > 0:
            vb, tb = seed_rule(_values(results, (d, o, "aware"), "auc"),
                               _values(results, (d, o, "naive"), "auc"))
            lines.append(f"(b) cross-dataset AUC, aware > naive ({d}, {round(100 * o)}%), "
                         f"reported only: {vb} ({tb})")
    return overall([va, vc]), lines


def plot(results: dict, path: Path) -> Path:
    """Three panels ((a), (b), (c)): per (pair, overlap, variant) each seed a dot, the mean a
    bar-shaped marker; one colour per variant."""
    fig = Figure(figsize=(13, 3.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    keys = list(results)
    labels = [f"{PARTNER[d]} {round(100 * o)}%\n{v}" for d, o, v in keys]
    colours = dict(zip(VARIANTS, ("tab:red", "tab:blue", "tab:green", "tab:purple"), strict=True))
    panels = (("centre", "(a) centre cosine, shared persons"), ("auc", "(b) cross-dataset AUC"),
              ("dataset_acc", "(c) dataset-classifier accuracy (0.5: invariant)"))
    for ax, (field, title) in zip(fig.subplots(1, 3), panels, strict=True):
        for k, key in enumerate(keys):
            v = _values(results, key, field)
            ax.plot(np.full(len(v), k), v, "o", ms=3, color=colours[key[2]], alpha=0.7)
            ax.plot([k], [np.mean(v)], "_", ms=14, mew=2, color=colours[key[2]])
        ax.set_xticks(np.arange(len(keys)), labels, fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
    return path


def measure(ctx: Context) -> Result:
    identities, images, held_out = ctx.size(60, 6), ctx.size(8, 4), 2
    pairs = {o: prepare(ctx, o, identities, images, held_out) for o in overlaps(ctx)}
    results = train_and_measure(ctx, pairs)
    verdict, lines = decide(results)
    figure = plot(results, ctx.figures / "dail.png")
    steps = ctx.steps(STEPS)
    return Result(
        name=NAME, title=CLAIMS[NAME].title, paper=PAPER, verdict=verdict,
        measurement=measurement(identities, images, held_out, steps, ctx.size(BATCH, 8)),
        rule=RULE + ". Applied to (a) centre cosine, dataset-aware > naive merge, and (c) "
             "dataset-classifier accuracy, + crossing dropout > + GRL (lower with the GRL), both "
             "at the domain-shifted 60% pair; shown when both are shown, not shown when either "
             "is. (b) is reported with the same rule per pair, outside the verdict.",
        table=table(results) + "\n\n" + "\n".join(f"- {line}" for line in lines),
        figures=[(str(figure), CAPTION)],
        notes=NOTES)


CAPTION = ("DAIL: (a) centre cosine of the shared persons, (b) cross-dataset verification AUC, "
           "(c) dataset-classifier accuracy, for A + B (domain-shifted) and A + C (same domain) at "
           "0%, 30% and 60% shared identities ((a), (b) undefined at 0%); dots: seeds, bars: their "
           "mean")
PAPER = (
    "Wang et al., ICPR 2020 (arXiv 2101.05419; abstract, method and its ablations on LFW, CFP-FP, "
    "AgeDB-30): treating a person present in two merged datasets as two classes \"affects "
    "back-propagation and generates non-representative embeddings\" (each class is the other's "
    "negative); a dataset-aware softmax (each sample normalised over its own dataset's classes, "
    "crossing dropout letting other-dataset classes in with a small probability, best about "
    "1e-4) removes that penalty, and a dataset classifier behind gradient reversal layers, "
    "trained in a second stage, makes the embedding dataset-invariant; together they beat the "
    "naive merge.")


def measurement(identities: int, images: int, held_out: int, steps: int, batch: int) -> str:
    return (
        "facelab.data.synthetic.multi: A (high-res colour) and two partners of "
        f"{identities} identities x {images} photos each, B (dark, 16-32 px, yaw x1.6: "
        "domain-shifted) and C (drawn like A: same domain), sharing 0%, 30% or 60% of their "
        f"identities with A under other class ids; the last {held_out} photos of every class held "
        "out. Runs (experiments/dail.py's overrides): naive merge (one softmax over both class "
        "spaces), dataset-aware softmax, + crossing dropout p = 0.02, + GRL stage (dataset "
        "classifier weight 0.1, stage 2 from 60% of the steps); demo recipe with a width-16 tiny "
        f"backbone, {steps} steps at batch {batch} (half A, half partner). All four variants on "
        "every seed at the domain-shifted 60% pair; naive vs dataset-aware on "
        "every seed at the other five pairs (budget). (a) mean cosine between the two "
        "classifier rows of each shared person (checkpoint head classifier.weight, rows in the "
        "union's class order), beside the mean over A-partner rows of different persons; (b) "
        "ROC-AUC (sklearn) of the cosine of every (held-out photo in A, held-out photo in the "
        "partner) of two shared persons, positive when the same person; (c) 2-fold stratified "
        "cross-validated accuracy of a logistic regression (sklearn) telling A's held-out "
        "embeddings from the partner's (0.5 = invariant).")


NOTES = (
    "At 0% overlap no person is in both datasets: (a) and (b) are undefined there (—), and (c) "
    "shows what the class-space treatment alone does to dataset separability: the naive merge's "
    "one softmax makes every A class a negative of every partner class, so the embedding gains "
    "from telling the datasets apart; the dataset-aware softmax never compares them. The GRL "
    "comparison is made at 60%. The same-domain pair (C) is the control for (c): two "
    "datasets drawn alike are already hard to tell apart. Stage 1 of the GRL variant trains the "
    "dataset classifier on detached embeddings; only stage 2 (the last 40% of the steps, λ ramped "
    "over a tenth of them) moves the embedding.")
