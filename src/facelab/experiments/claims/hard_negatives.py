"""hard_negatives: CurricularFace's curriculum and MV-Softmax's weight on hard negatives.

CurricularFace (Huang et al., CVPR 2020, Sec. 3.2-3.3, Fig. 1 and its Table 1 comparison with
MV-Arc-Softmax): a hard negative j (cos θ_j > cos(θ_y + m)) enters the softmax as
cos θ_j·(t + cos θ_j); t, an EMA of the mean target cosine from t₀ = 0, rises over training, so the
modulation coefficient I = t + cos θ_j of hard negatives is small early (easy samples first) and
grows later (hard samples later): an adaptive curriculum. MV-Softmax (Wang et al., AAAI 2020,
Sec. 3): a mis-classified vector (the same mask) enters as (t + 1)·cos θ_j + t with t fixed, an
increased weight from the first step on.

Measured here: CurricularFace and MV-Arc-Softmax (configs/heads, s=32, m=0.5) trained on the
quality_norm set (`quality_norm.quality_data`), each run stopped and resumed at 10, 25, 50, 75 % of
its steps (train(stop_at=...), same schedule as one uninterrupted run) with a copy of the
checkpoint kept at each stop. At every checkpoint, on a fixed held-out batch (the first held-out
photo of every training identity): CurricularFace's buffer t, the share of non-target logits that
are hard negatives, and their mean coefficient t + cos θ_j and logit shift (modulated - plain
cosine; log of the extra softmax weight over s).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from facelab import CONFIGS
from facelab.config import load_config
from facelab.eval.embed import embed_raw
from facelab.eval.reports.plots import save_figure
from facelab.experiments.claims import CLAIMS
from facelab.experiments.claims.base import (
    RULE,
    Context,
    Result,
    Split,
    mean_std,
    overall,
    seed_rule,
    train_minutes,
)
from facelab.experiments.claims.quality_norm import (
    budget,
    common_overrides,
    quality_data,
)
from facelab.heads import build_margin
from facelab.io import read_image
from facelab.model import CHECKPOINT_NAME, load_checkpoint, model_from_checkpoint
from facelab.train.loop import train

log = logging.getLogger(__name__)
NAME = "hard_negatives"
HEADS = ("curricularface", "mv_arc")
STAGES = (0.1, 0.25, 0.5, 0.75, 1.0)  # fractions of the steps with a checkpoint kept


def stage_steps(steps: int, stages: Sequence[float] = STAGES) -> list[int]:
    """The distinct steps round(f·steps) >= 1 of the stage fractions, ending at `steps`."""
    return sorted({max(1, round(f * steps)) for f in stages} | {steps})


def _stops(ctx: Context) -> list[int]:
    """The checkpoint steps of a run: STAGES, or the first and the last only when quick."""
    return stage_steps(budget(ctx)[0], (STAGES[0], STAGES[-1]) if ctx.quick else STAGES)


def train_staged(recipe: Path, overrides: Sequence[str], out: Path, stops: Sequence[int]
                 ) -> list[Path]:
    """Train `recipe` + `overrides` into `out`, leaving (stop_at) and resuming at each of `stops`
    but the last and copying the checkpoint to `stage-step<k>.pt`; returns the checkpoint files of
    every stop (the last: the run's own). A finished run with all its copies is reused; one that
    lost a copy is trained again from scratch."""
    copies = [out / f"stage-step{k}.pt" for k in stops[:-1]]
    files = [*copies, out / CHECKPOINT_NAME]
    done = (out / "metrics.json").exists()
    if done and all(p.exists() for p in copies):
        return files
    if done:  # a copy is missing and the run is past it
        shutil.rmtree(out)
    cfg = load_config(recipe, [*overrides, f"output={out}", f"name={out.parent.name}-{out.name}"])
    for k, copy in zip(stops[:-1], copies, strict=True):
        if copy.exists():
            continue
        train(cfg, resume=(out / CHECKPOINT_NAME).exists(), stop_at=k)
        shutil.copyfile(out / CHECKPOINT_NAME, copy)
    train(cfg, resume=(out / CHECKPOINT_NAME).exists())
    return files


def hard_stats(x: np.ndarray, w: np.ndarray, labels: np.ndarray, m: float, kind: str,
               t: float) -> dict[str, float]:
    """Hard negatives of embeddings x [N, d] against class centres w [C, d] (both normalised here).

    A non-target j is hard when cos θ_j > cos(θ_y + m) (the mask of both heads, before any
    fallback). Returns the mean target cosine, the share of hard non-target logits, and over the
    hard ones the mean coefficient I = t + cos θ_j (CurricularFace; NaN for mv_arc, whose
    multiplier is t + 1) and the mean logit shift N(cos θ_j) - cos θ_j: cos θ_j·(t + cos θ_j - 1)
    for CurricularFace, t·(cos θ_j + 1) for MV-Arc-Softmax (adaptive); NaN where nothing is hard.
    """
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = np.clip(x @ w.T, -1.0, 1.0)  # [N, C]
    rows = np.arange(len(x))
    target = cos[rows, labels]  # [N]
    sin = np.sqrt(1.0 - np.clip(target, -1.0 + 1e-7, 1.0 - 1e-7) ** 2)
    margined = target * np.cos(m) - sin * np.sin(m)  # [N] cos(θ_y + m)
    hard = cos > margined[:, None]  # [N, C]
    hard[rows, labels] = False
    c = cos[hard]  # [H] cosines of the hard negatives
    shift = c * (t + c - 1.0) if kind == "curricularface" else t * (c + 1.0)
    coef = t + c if kind == "curricularface" else np.full_like(c, np.nan)
    nan = float("nan")
    return {"target": float(target.mean()),
            "fraction": float(hard.sum() / (len(x) * (w.shape[0] - 1))),
            "coef": float(coef.mean()) if len(c) else nan,
            "shift": float(shift.mean()) if len(c) else nan}


def _batch(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The fixed held-out batch: the first held-out photo of every training identity (images
    [N, 112, 112, 3] uint8, labels [N])."""
    first: dict[int, Path] = {}
    for path, label in split.held_out:
        first.setdefault(label, path)
    labels = np.array(sorted(first))
    return np.stack([read_image(first[k]) for k in labels]), labels


def _stage(path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """One checkpoint's step, t (CurricularFace's buffer, or MV's fixed t) and hard_stats."""
    ckpt = load_checkpoint(path)
    head = ckpt["config"]["head"]
    margin = build_margin(head["margin"], **head["kwargs"])
    t = float(ckpt["head"]["margin.t"]) if head["margin"] == "curricularface" else margin.t
    model, pre = model_from_checkpoint(ckpt)
    feats, _ = embed_raw(model, images, flip=False, preprocess=pre)  # [N, d], eval, no grad
    w = ckpt["head"]["classifier.weight"].double().numpy()  # [C, d]
    stats = hard_stats(feats.astype(np.float64), w, labels, margin.m, head["margin"], t)
    return {"step": int(ckpt["step"]), "t": t, **stats}


def _curves(ctx: Context) -> dict[str, dict[int, list[dict]]]:
    """{head: {seed: [stage figures, by step]}}, training (or reusing) every staged run."""
    split = quality_data(ctx)
    images, labels = _batch(split)
    # no pair sets: the claim reads the checkpoints only (saves the final evaluation)
    common = common_overrides(ctx, split, pairs=False)
    out: dict[str, dict[int, list[dict]]] = {}
    for head in HEADS:
        for seed in ctx.seeds:
            run = ctx.root / NAME / head / f"seed{seed}"
            log.info("claim %s: run %s", NAME, run)
            files = train_staged(CONFIGS / "heads" / f"{head}.yaml", [*common, f"seed={seed}"],
                                 run, _stops(ctx))
            out.setdefault(head, {})[seed] = [_stage(f, images, labels) for f in files]
    return out


def _minutes(ctx: Context) -> float:
    return train_minutes([ctx.root / NAME / h / f"seed{s}" for h in HEADS for s in ctx.seeds])


def _comparisons(curves: dict[str, dict[int, list[dict]]]) -> list[tuple[str, str, str]]:
    """CurricularFace, last checkpoint against the first (10 %): t, and the hard negatives' mean
    coefficient t + cos θ_j."""
    cf = list(curves["curricularface"].values())
    out = []
    for key, label in (("t", "t"), ("coef", "hard-negative coefficient t + cos θ_j")):
        v, text = seed_rule([s[-1][key] for s in cf], [s[0][key] for s in cf])
        out.append((f"curricularface {label}: end > 10 % of training", v, text))
    return out


def _table(curves: dict[str, dict[int, list[dict]]], comparisons: list) -> str:
    """Per head and stage (mean ± std over seeds): step, t, mean target cosine, hard fraction,
    coefficient, shift; then the comparisons."""
    rows = ["| head | step | t | mean cos θ_y | hard fraction | mean t + cos θ_j | "
            "mean logit shift |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for head, per in curves.items():
        runs = list(per.values())
        for i, stage in enumerate(runs[0]):
            cells = [mean_std([r[i][k] for r in runs], 4) for k in ("t", "target", "fraction")]
            cells += [mean_std([r[i]["coef"] for r in runs]) if head == "curricularface" else "—",
                      mean_std([r[i]["shift"] for r in runs])]
            rows.append("| " + " | ".join([f"`{head}`", str(stage["step"]), *cells]) + " |")
    rows += ["", "| comparison | verdict | rule |", "| --- | --- | --- |"]
    rows += [f"| {c} | {v} | {t} |" for c, v, t in comparisons]
    return "\n".join(rows)


def _plot(curves: dict[str, dict[int, list[dict]]], path: Path) -> None:
    """Three panels against the step (mean ± std band over seeds): CurricularFace's t (and MV's
    fixed t), the hard-negative fraction, the hard negatives' mean logit shift."""
    fig = Figure(figsize=(12, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    keys = (("t", "t"), ("fraction", "hard-negative fraction"),
            ("shift", "mean logit shift of hard negatives"))
    for head, per in curves.items():
        runs = list(per.values())
        steps = [s["step"] for s in runs[0]]
        for ax, (key, label) in zip(axes, keys, strict=True):
            vals = np.array([[s[key] for s in r] for r in runs], np.float64)  # [seeds, stages]
            mean = vals.mean(0)
            std = vals.std(0, ddof=1) if len(vals) > 1 else np.zeros_like(mean)
            ax.plot(steps, mean, marker="o", ms=3, label=head)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
            ax.set_xlabel("step")
            ax.set_ylabel(label)
    axes[0].legend()
    save_figure(fig, path)


PAPER = (
    "CurricularFace (Huang et al., CVPR 2020, Sec. 3.2-3.3, Fig. 1, Table 1): hard negatives "
    "(cos θ_j > cos(θ_y + m)) enter the softmax as cos θ_j·(t + cos θ_j) with t, an EMA of the "
    "mean target cosine from t₀ = 0, rising over training: easy samples are emphasised early, "
    "hard ones later (an adaptive curriculum), while MV-Softmax (Wang et al., AAAI 2020, Sec. 3) "
    "raises the weight of mis-classified vectors, (t + 1)·cos θ_j + t with t fixed, from the "
    "start.")


def measure(ctx: Context) -> Result:
    curves = _curves(ctx)
    comparisons = _comparisons(curves)
    png = ctx.figures / "hard_negatives.png"
    _plot(curves, png)
    steps, batch, width = budget(ctx)
    return Result(
        name=NAME, title=CLAIMS[NAME].title, paper=PAPER,
        measurement=(
            f"CurricularFace and MV-Arc-Softmax (configs/heads: s=32, m=0.5; MV t=0.2 adaptive), "
            f"tiny backbone width {width}, {steps} steps x batch {batch}, seeds "
            f"{list(ctx.seeds)}, on the quality_norm synthetic set; checkpoints at steps "
            f"{_stops(ctx)} (stop and resume of one run, one schedule). At each, on the "
            "first held-out photo of every training identity (eval mode, no flip): t (the "
            "checkpoint's buffer), the share of non-target logits with cos θ_j > cos(θ_y + m), "
            "and over those hard negatives the mean coefficient t + cos θ_j (CurricularFace) and "
            "the mean logit shift N(cos θ_j) - cos θ_j (CurricularFace cos θ_j·(t + cos θ_j - 1), "
            "MV t·(cos θ_j + 1): > 0 means more weight than plain softmax)."),
        rule=(f"{RULE}; applied to CurricularFace's t and its hard-negative mean coefficient "
              "t + cos θ_j, per seed, at the last checkpoint against the first (10 % of the "
              "steps). Verdict: base.overall of the 2. MV-Softmax's shift is reported, not "
              "tested: t·(cos θ_j + 1) > 0 holds by construction."),
        table=_table(curves, comparisons),
        verdict=overall([v for _, v, _ in comparisons]),
        figures=[(str(png), "t, hard-negative fraction and mean logit shift of hard negatives "
                  "against the training step (fixed held-out batch), mean ± std over seeds")],
        notes=("Notes. With t₀ = 0 and EMA momentum 0.01, part of t's rise is the EMA filling "
               "up (after k steps t is about (1 - 0.99^k) times the recent mean target cosine of "
               "the training batches); that is the paper's design. The column mean cos θ_y is "
               "the target cosine on the held-out batch: t rising while it stays flat would be "
               "the EMA alone. It also shows how far each head has trained at this budget: where "
               "it stays near 0, nearly every negative is hard. Training time of the "
               f"{len(HEADS) * len(ctx.seeds)} runs (from their metrics.json, machine load "
               f"included): {_minutes(ctx):.1f} min."))
