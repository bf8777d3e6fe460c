"""Pair losses vs a margin head: contrastive, triplet (semi-hard), margin loss (distance-weighted
and uniform-histogram mining) and ArcFace with AdaCos's fixed scale, same budget, small and larger
training set.

AdaCos (Zhang et al. 2019, Eq. 12) fixes the scale at s = sqrt(2)·ln(C - 1) for C classes, so the
ArcFace row's s follows the training set. The pair losses train on P x K batches (data.sampler=pk)
with no classifier head (objective: pairs); ArcFace keeps the uniform sampler.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from facelab.experiments.common import (
    RECIPE,
    check_grid,
    markdown_table,
    prepare_synth,
    run_grid,
    summarise,
    write_report,
)

PAIR_VARIANTS = {  # name: overrides on the demo recipe
    "contrastive": ["pairs.loss=contrastive"],
    "triplet_semihard": ["pairs.loss=triplet", "pairs.miner=semihard"],
    "margin_distance_weighted": ["pairs.loss=margin", "pairs.miner=distance_weighted"],
    "margin_uniform_histogram": ["pairs.loss=margin", "pairs.miner=uniform_histogram"],
}
# sets: training set name -> (identities, images per identity). "small" is LFW-like (a few hundred
# people), "large" has ~7x the classes; 400 steps of 64 on a quiet 2-core machine: ~25 minutes for
# two seeds.
FULL = {"sets": {"small": (300, 8), "large": (2000, 8)}, "pairs": 1000, "steps": 400, "batch": 64,
        "k": 4}
QUICK = {"sets": {"small": (12, 4), "large": (16, 4)}, "pairs": 40, "steps": 3, "batch": 8, "k": 2}
EVAL_SETS = ("synth-lfw",)


def adacos_scale(num_classes: int) -> float:
    """AdaCos's fixed scale sqrt(2)·ln(C - 1) (Zhang et al. 2019, Eq. 12)."""
    return math.sqrt(2.0) * math.log(num_classes - 1)


def variants(num_classes: int, k: int) -> dict[str, list[str]]:
    """The five rows for a training set of `num_classes` identities."""
    pair = ["objective=pairs", "data.sampler=pk", f"data.pk_k={k}"]
    rows = {name: pair + overrides for name, overrides in PAIR_VARIANTS.items()}
    rows["arcface_adacos_scale"] = ["objective=head", "head.margin=arcface",
                                    f"head.kwargs={{s: {adacos_scale(num_classes):.4f}, m: 0.5}}"]
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/pairs"), help="run folders")
    p.add_argument("--data", type=Path, default=Path("data/pairs"),
                   help="synthetic sets (generated once)")
    p.add_argument("--doc", type=Path, default=Path("docs/pairs.md"), help="the markdown table")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--quick", action="store_true",
                   help="tiny sets and 3 steps in a temporary folder (a smoke test)")


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    if args.quick:
        tmp = Path(tempfile.mkdtemp(prefix="facelab-pairs-"))
        args.out, args.data, args.doc = tmp / "runs", tmp / "data", tmp / "pairs.md"
    budget = [f"train.steps={plan['steps']}", f"data.batch_size={plan['batch']}",
              "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=100000",
              f"schedule.warmup_steps={plan['steps'] // 10}"]
    for identities, _ in plan["sets"].values():  # a bad seed fails before any data is made
        check_grid(RECIPE, variants(identities, plan["k"]), args.seeds, budget)
    summary, extra = {}, {}
    for set_name, (identities, per_id) in plan["sets"].items():
        aligned, pair_files = prepare_synth(args.data / set_name, identities, per_id,
                                            plan["pairs"])
        val = [f for f in pair_files if Path(f).stem in EVAL_SETS]
        common = [f"data.train={aligned}", f"data.val_pairs={val}", *budget]
        results = run_grid(RECIPE, variants(identities, plan["k"]), args.seeds,
                           args.out / set_name, common)
        for name, per_set in summarise(results, EVAL_SETS).items():
            row = f"{set_name}/{name}"
            summary[row] = per_set
            speed = [m["train"]["images_per_second"] for m in results[name].values()]
            fold_std = [m["pairs"]["synth-lfw"]["accuracy_std"] for m in results[name].values()]
            f1 = [m["thresholds"]["synth-lfw"]["f1"]["threshold"] for m in results[name].values()]
            extra[row] = {"10-fold std (%)": f"{100 * sum(fold_std) / len(fold_std):.2f}",
                          "training set": f"{identities} ids × {per_id}",
                          "images/s": f"{sum(speed) / len(speed):.0f}",
                          "F1 threshold (d²)": f"{sum(f1) / len(f1):.3f}"}
    command = "facelab experiment pairs" + (" --quick" if args.quick else "")
    intro = (f"Seeds {args.seeds} per row (mean ± std over seeds), {plan['steps']} steps of batch "
             f"{plan['batch']} on the demo recipe "
             f"(tiny backbone, 128-d, SGD lr 0.1, cosine, warm-up {plan['steps'] // 10}); pair "
             f"losses on P x K batches (K = {plan['k']}), no head. 10-fold verification accuracy "
             f"on {plan['pairs']} synth-lfw pairs of unseen identities.")
    table = markdown_table(summary, EVAL_SETS, extra=extra)
    write_report(args.doc, "Pair losses vs a margin head", command, intro, table)
    return 0
