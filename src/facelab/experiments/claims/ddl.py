"""Claim `ddl`: Huang et al., "Improving Face Recognition from Hard Samples via Distribution
Distillation Loss", ECCV 2020 (arXiv 2002.03662), Fig. 1 and Tables 1-4: distilling the similarity
distributions of easy samples (the teacher: frontal, high resolution) into those of hard samples
(the student: profile, low resolution) narrows the easy-hard gap.

Measured on one synthetic set whose generator records every photo's pose and resolution: ArcFace
on DDL's batches (`arcface+batch` of experiments/ddl.py: the DDL sampler, the DDL weights at 0)
against ArcFace + DDL on the same batches, DDL's options at their defaults. Mechanism: on held-out
photos of the training identities, split easy/hard as distill.split=attribute does, the KL
divergence between the easy and the hard positive similarity histograms (and negative ones), with
DDL's own histogram (facelab.losses.ddl.soft_histogram, kl_divergence). Outcome: the easy-hard
verification gaps synth-lfw − synth-cfp (pose) and synth-lfw − synth-lowres (resolution).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from facelab.config import DistillConfig
from facelab.eval.reports.plots import save_figure
from facelab.experiments.claims import CLAIMS
from facelab.experiments.claims.base import (
    RULE,
    Context,
    Result,
    Split,
    embed_held_out,
    mean_std,
    overall,
    seed_rule,
    synth_split,
)
from facelab.experiments.common import RECIPE, accuracy, train_once
from facelab.losses.ddl import kl_divergence, soft_histogram

log = logging.getLogger(__name__)
NAME = "ddl"
STEPS, BATCH = 400, 64  # batch: BATCH // 8 identities x (2 easy + 2 hard + 4 random)
MODEL = ["model.kwargs={width: 16}"]
# DDL at its defaults (detach_teacher false, bin_nodes left: docs/ddl.md "Options"); no identity
# held out for distill's own plots, so both variants train on every identity
DDL = ["distill.name=ddl", "distill.split=attribute", "distill.plot_identities=0"]
VARIANTS = {"arcface+batch": [*DDL, "distill.kl_pos=0", "distill.kl_neg=0", "distill.order=0"],
            "arcface+ddl": DDL}
# quick: 10 photos per identity, the split loosened so that identities have 2 hard ones
# (experiments/ddl.py's QUICK_DISTILL without its plots)
QUICK_SPLIT = {"easy_max_yaw": 12.0, "hard_min_yaw": 12.0}
MAX_NEGATIVES = 20000  # negative pairs per histogram (a fixed random subset): [N, bins] memory


def split_config(ctx: Context) -> DistillConfig:
    """The easy/hard thresholds the runs use (DistillConfig defaults; loosened when quick)."""
    return DistillConfig(**(QUICK_SPLIT if ctx.quick else {}))


def easy_hard(attributes: dict[str, np.ndarray], cfg: DistillConfig
              ) -> tuple[np.ndarray, np.ndarray]:
    """(easy [N] bool, hard [N] bool) of photos by |yaw_deg| and resolution, as
    facelab.distill.sampling.attribute_split decides them (hard excludes easy)."""
    yaw, res = np.abs(attributes["yaw_deg"]), attributes["resolution"]
    easy = (yaw < cfg.easy_max_yaw) & (res >= cfg.easy_min_resolution)
    hard = (yaw >= cfg.hard_min_yaw) | (res < cfg.hard_max_resolution)
    return easy, hard & ~easy


def pair_cosines(emb: np.ndarray, labels: np.ndarray, easy: np.ndarray, hard: np.ndarray,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Cosines of every photo pair i < j of embeddings [N, d] (L2-normalised), grouped:
    easy_pos / easy_neg: both photos easy; hard_pos / hard_neg: at least one hard, the other easy
    or hard (a hard photo verified against any: what synth-cfp / lowres pairs are). pos: same
    label, neg: different labels; neg sets are a fixed random subset of at most MAX_NEGATIVES."""
    i, j = np.triu_indices(len(labels), k=1)  # [P] every pair once
    cos = np.sum(emb[i] * emb[j], axis=1)  # [P]
    same = labels[i] == labels[j]
    both_easy = easy[i] & easy[j]
    any_hard = (hard[i] & (easy[j] | hard[j])) | (hard[j] & (easy[i] | hard[i]))
    rng = np.random.default_rng(seed)
    out = {}
    for name, where in (("easy", both_easy), ("hard", any_hard)):
        out[f"{name}_pos"] = cos[where & same]
        neg = cos[where & ~same]
        if len(neg) > MAX_NEGATIVES:
            neg = neg[np.sort(rng.choice(len(neg), MAX_NEGATIVES, replace=False))]
        out[f"{name}_neg"] = neg
    return out


def histogram_kl(teacher: np.ndarray, student: np.ndarray, cfg: DistillConfig) -> float:
    """KL(P_teacher ‖ P_student) of DDL's soft histograms (bins, sigma, nodes, KL form of `cfg`)
    of two sets of cosines [n], [m], in float64."""
    p = soft_histogram(torch.from_numpy(np.asarray(teacher, np.float64)), cfg.bins, cfg.sigma,
                       cfg.bin_nodes)
    q = soft_histogram(torch.from_numpy(np.asarray(student, np.float64)), cfg.bins, cfg.sigma,
                       cfg.bin_nodes)
    return float(kl_divergence(p, q, cfg.kl_form))


def margin_gap(sims: dict[str, np.ndarray]) -> float:
    """(mean easy+ − mean easy−) − (mean hard+ − mean hard−): how much less the hard positives stand
    above the hard negatives than the easy ones do (the paper's Fig. 1 "expectation margin")."""
    easy = sims["easy_pos"].mean() - sims["easy_neg"].mean()
    return float(easy - (sims["hard_pos"].mean() - sims["hard_neg"].mean()))


def measure_run(run: Path, metrics: dict, split: Split, cfg: DistillConfig) -> dict:
    """KL+ / KL− (easy ‖ hard), mean cosines and the accuracy gaps of one finished run (its
    metrics.json: `metrics`)."""
    emb, _ = embed_held_out(run, [p for p, _ in split.held_out])  # [N, d]
    labels = np.array([label for _, label in split.held_out])  # [N]
    easy, hard = easy_hard(split.attributes, cfg)
    sims = pair_cosines(emb, labels, easy, hard)
    acc = {s: accuracy(metrics, s) for s in ("synth-lfw", "synth-cfp", "synth-lowres")}
    return {"kl_pos": histogram_kl(sims["easy_pos"], sims["hard_pos"], cfg),
            "kl_neg": histogram_kl(sims["easy_neg"], sims["hard_neg"], cfg),
            **{f"mean_{k}": float(v.mean()) for k, v in sims.items()},
            **{f"n_{k}": len(v) for k, v in sims.items()},
            "margin_gap": margin_gap(sims),
            **acc, "gap_cfp": acc["synth-lfw"] - acc["synth-cfp"],
            "gap_lowres": acc["synth-lfw"] - acc["synth-lowres"], "sims": sims}


def train_all(ctx: Context, split: Split, cfg: DistillConfig) -> dict[str, list[dict]]:
    """{variant: [measures per seed]}, runs in ctx.root/ddl/<variant>/seed<k>."""
    steps, batch = ctx.steps(STEPS), ctx.size(BATCH, 16)
    attributes = split.train.parent.parent / "attributes.csv"  # the generator's, beside aligned/
    common = [*MODEL, *ctx.run_overrides(steps, batch), f"data.train={split.train}",
              f"data.val_pairs={split.val_pairs}", f"distill.attributes={attributes}",
              f"distill.identities_per_batch={batch // 8}",
              *(f"distill.{k}={v}" for k, v in (QUICK_SPLIT if ctx.quick else {}).items())]
    out: dict[str, list[dict]] = {}
    for variant, overrides in VARIANTS.items():
        for seed in ctx.seeds:
            run = ctx.root / NAME / variant / f"seed{seed}"
            metrics = train_once(RECIPE, [*common, *overrides, f"seed={seed}"], run)
            out.setdefault(variant, []).append(measure_run(run, metrics, split, cfg))
    return out


ROWS = (("kl_pos", "KL(P+ easy ‖ P+ hard)", 4), ("kl_neg", "KL(P− easy ‖ P− hard)", 4),
        ("mean_easy_pos", "mean cos, easy positives", 3),
        ("mean_hard_pos", "mean cos, hard positives", 3),
        ("mean_easy_neg", "mean cos, easy negatives", 3),
        ("mean_hard_neg", "mean cos, hard negatives", 3),
        ("margin_gap", "(mean+ − mean−) easy − the same hard", 3),
        ("synth-lfw", "synth-lfw acc", 4), ("synth-cfp", "synth-cfp acc", 4),
        ("synth-lowres", "synth-lowres acc", 4), ("gap_cfp", "gap lfw − cfp", 4),
        ("gap_lowres", "gap lfw − lowres", 4))


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: one row per quantity, one column per variant (mean ± std over seeds)."""
    names = list(results)
    rows = ["| quantity | " + " | ".join(f"`{n}`" for n in names) + " |",
            "| --- |" + " ---: |" * len(names)]
    for key, label, digits in ROWS:
        cells = [mean_std([m[key] for m in results[n]], digits) for n in names]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    first = results[names[0]][0]
    counts = ", ".join(f"{k.replace('_', ' ')} {first[f'n_{k}']}"
                       for k in ("easy_pos", "hard_pos", "easy_neg", "hard_neg"))
    rows += ["", f"Held-out pairs per run: {counts}."]
    return "\n".join(rows)


def decide(results: dict[str, list[dict]]) -> tuple[str, list[str]]:
    """(verdict, rule lines): KL+ and the two gaps lower with DDL decide; KL− is reported."""
    control, ddl = results["arcface+batch"], results["arcface+ddl"]
    lines, verdicts = [], []
    for key, label, decides in (("kl_pos", "KL(P+ easy ‖ P+ hard)", True),
                                ("gap_cfp", "gap lfw − cfp", True),
                                ("gap_lowres", "gap lfw − lowres", True),
                                ("kl_neg", "KL(P− easy ‖ P− hard)", False)):
        verdict, text = seed_rule([m[key] for m in control], [m[key] for m in ddl])
        verdicts += [verdict] if decides else []
        lines.append(f"{label} lower with DDL{'' if decides else ', reported only'}: "
                     f"{verdict} ({text})")
    return overall(verdicts), lines


def plot(results: dict[str, list[dict]], path: Path) -> Path:
    """Held-out easy/hard positive and negative cosine histograms of each variant's first seed."""
    fig = Figure(figsize=(10, 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    edges = np.linspace(-0.4, 1.0, 57)
    styles = {"easy_pos": ("tab:blue", "-"), "hard_pos": ("tab:red", "-"),
              "easy_neg": ("tab:blue", "--"), "hard_neg": ("tab:red", "--")}
    for ax, (variant, runs) in zip(fig.subplots(1, len(results)), results.items(), strict=True):
        for key, (colour, ls) in styles.items():
            values = runs[0]["sims"][key]
            ax.hist(values, bins=edges, density=True, histtype="step", color=colour, ls=ls,
                    lw=1.5, label=f"{key.replace('_', ' ')} (n={len(values)})")
        ax.set_title(f"{variant}: KL+ {runs[0]['kl_pos']:.3f}, KL− {runs[0]['kl_neg']:.3f}",
                     fontsize=9)
        ax.set_xlabel("cosine similarity (held-out photos)")
        ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, path)
    return path


def measure(ctx: Context) -> Result:
    identities, images, held_out = ctx.size(100, 12), ctx.size(16, 10), ctx.size(6, 4)
    split = synth_split(ctx, "ddl", identities, images, held_out, pairs=ctx.size(600, 40))
    cfg = split_config(ctx)
    results = train_all(ctx, split, cfg)
    verdict, lines = decide(results)
    figure = plot(results, ctx.figures / "ddl.png")
    return Result(
        name=NAME, title=CLAIMS[NAME].title, paper=PAPER, verdict=verdict,
        measurement=measurement(ctx, identities, images, held_out, cfg),
        rule=RULE + ". Applied, control minus DDL, to KL(P+ easy ‖ P+ hard) and to the two "
             "accuracy gaps (lfw − cfp, lfw − lowres): shown when all three are shown, not shown "
             "when any is not; KL(P− easy ‖ P− hard) is reported with the same rule, outside the "
             "verdict.",
        table=table(results) + "\n\n" + "\n".join(f"- {line}" for line in lines),
        figures=[(str(figure), "DDL: held-out cosine histograms, easy (blue) and hard (red) "
                  "photos, positives solid, negatives dashed, first seed of each variant")],
        notes=NOTES)


PAPER = (
    "Huang et al., ECCV 2020 (arXiv 2002.03662; abstract, Fig. 1, Sec. 3): ArcFace-like "
    "classifiers do well on easy samples and fail on hard ones (large pose, low resolution); DDL "
    "builds a teacher similarity distribution from easy samples and a student one from hard "
    "samples (positive and negative pairs, soft histograms) and constrains the student to "
    "approximate the teacher, which \"leads to smaller overlap between the positive and negative "
    "pairs in the student distribution\" and narrows the performance gap between easy and hard "
    "samples (Fig. 1: SCface, high- vs low-resolution images; tables on CFP-FP, CPLFW, SCface, "
    "IJB).")


def measurement(ctx: Context, identities: int, images: int, held_out: int,
                cfg: DistillConfig) -> str:
    return (
        f"One synthetic set of {identities} identities x {images} photos, the last {held_out} "
        "photos of every identity held out; easy: |yaw| < "
        f"{cfg.easy_max_yaw:g}° and resolution >= {cfg.easy_min_resolution:g} px, hard: |yaw| >= "
        f"{cfg.hard_min_yaw:g}° or resolution < {cfg.hard_max_resolution:g} px (distill's "
        "attribute split, from attributes.csv). Two variants, same batches and seeds: "
        "`arcface+batch` (DDL sampler: batch/8 identities x 2 easy + 2 hard + 4 random images, "
        "DDL weights 0) and `arcface+ddl` (KL+ 0.1, KL− 0.02, order 0.5, with the defaults "
        "distill.detach_teacher=false and distill.bin_nodes=left, docs/ddl.md \"Options\"); demo "
        f"recipe with a width-16 tiny backbone, {ctx.steps(STEPS)} steps at batch "
        f"{ctx.size(BATCH, 16)}, seeds {', '.join(map(str, ctx.seeds))}. Mechanism: on the "
        "held-out photos, the cosines of same-identity pairs (positives) and of different-identity "
        "pairs (negatives, a fixed subset of at most 20000), split into easy pairs (both photos "
        "easy) and hard pairs (at least one hard photo); KL(P easy ‖ P hard) of DDL's soft "
        f"histograms ({cfg.bins} bins on [0, 1), σ = {cfg.sigma:g}, left nodes). Outcome: "
        "10-fold accuracy on synth-lfw, synth-cfp (frontal vs profile), synth-lowres (vs 5-9 px "
        "faces) of unseen identities (metrics.json) and the gaps lfw − cfp, lfw − lowres.")


NOTES = (
    "The held-out positives and negatives are all pairs, not the hardest in-batch negatives of "
    "the loss: the hardest negative depends on how many photos a branch holds, which differs "
    "between the easy and the hard held-out photos. A hard pair has at least one hard photo, as "
    "a synth-cfp or synth-lowres pair does.")
