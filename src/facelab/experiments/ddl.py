"""ddl: ArcFace with and without DDL (hard-sample distillation), same budget and seeds ->
docs/ddl.md.

Variants on one synthetic set (easy/hard from its attributes.csv: pose and resolution):
  arcface        the demo recipe, uniform batches over every identity;
  arcface+batch  the DDL batches (2 easy + 2 hard images of batch/8 identities per batch, 16 held
                 out for the histograms) with the DDL weights at 0: the control for the batch
                 composition;
  arcface+ddl    the same batches with DDL at METHODS.md's weights (0.1, 0.02, 0.5).
The table gives synth-lfw / synth-cfp (pose) / synth-lowres (resolution) accuracy and the easy-hard
gaps (lfw − cfp, lfw − lowres, computed per seed) as mean ± spread, and the held-out
teacher/student similarity means after training. `--quick`: tiny data, a few steps, output in a
temporary folder (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from facelab.experiments.common import (
    RECIPE,
    check_grid,
    format_cell,
    markdown_table,
    mean_spread,
    prepare_synth,
    run_grid,
    summarise,
    write_report,
)
from facelab.io import write_atomic

log = logging.getLogger(__name__)
QUICK = {"identities": 16, "images_per_identity": 10, "pairs": 40, "steps": 3, "batch_size": 16,
         "seeds": [0]}
# 10 photos per identity: the split is loosened so that most identities have 2 hard ones
QUICK_DISTILL = ["distill.plot_identities=2", "distill.easy_max_yaw=12", "distill.hard_min_yaw=12"]
# the settings docs/ddl.md's table was measured with; the defaults differ on these two
# (docs/ddl.md, "Options")
DDL = ["distill.name=ddl", "distill.split=attribute", "distill.detach_teacher=true",
       "distill.bin_nodes=mid"]
VARIANTS = {"arcface": [],
            "arcface+batch": [*DDL, "distill.kl_pos=0", "distill.kl_neg=0", "distill.order=0"],
            "arcface+ddl": DDL}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data/ddl-synth"),
                   help="synthetic set (made if missing)")
    p.add_argument("--out", type=Path, default=Path("runs/experiment-ddl"),
                   help="one run folder per variant/seed")
    p.add_argument("--doc", type=Path, default=Path("docs/ddl.md"))
    p.add_argument("--identities", type=int, default=250)
    p.add_argument("--images-per-identity", type=int, default=20)
    p.add_argument("--pairs", type=int, default=2000, help="pairs per verification set")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64,
                   help="8 images per identity unit: 2 easy, 2 hard, 4 random")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (1: kind to a shared machine)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--quick", action="store_true",
                   help="tiny data, a few steps, output to a temp folder")


def run(args: argparse.Namespace) -> int:
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="facelab-ddl-") as tmp:
            root = Path(tmp)
            plan = {**vars(args), **QUICK, "data": root / "data", "out": root / "runs",
                    "doc": root / "ddl.md"}
            return _run(argparse.Namespace(**plan), quick=True)
    return _run(args, quick=False)


def gaps(per_set: dict[str, list[float]]) -> dict[str, str]:
    """Easy-hard gaps in points, per seed then mean ± spread: lfw − cfp and lfw − lowres."""
    lfw = per_set["synth-lfw"]
    return {f"lfw − {hard} (pts)": format_cell([a - b for a, b in
                                                zip(lfw, per_set[f"synth-{hard}"], strict=True)])
            for hard in ("cfp", "lowres")}


def similarity_means(runs: list[Path]) -> dict[str, str]:
    """Held-out mean cosines after training (ddl_after.json), mean ± spread over seeds, as text
    cells (cosines, not percent)."""
    found = [json.loads((r / "ddl_after.json").read_text())
             for r in runs if (r / "ddl_after.json").exists()]
    if not found:
        return {}
    cells = {}
    for key, name in (("teacher_pos", "T+"), ("student_pos", "S+"), ("teacher_neg", "T−"),
                      ("student_neg", "S−")):
        means = [sum(f[key]) / len(f[key]) for f in found if f[key]]
        mean, spread = mean_spread(means or [float("nan")])
        cells[f"{name} cos"] = f"{mean:.3f} ± {spread:.3f}"
    return cells


def _run(args: argparse.Namespace, quick: bool) -> int:
    start = time.perf_counter()
    budget = [f"train.steps={args.steps}", f"data.batch_size={args.batch_size}",
              "train.checkpoint_every=100000", "train.progress=false", "train.tensorboard=false",
              f"schedule.warmup_steps={max(1, args.steps // 12)}", f"train.threads={args.threads}",
              f"distill.identities_per_batch={max(1, args.batch_size // 8)}",
              f"distill.attributes={args.data / 'attributes.csv'}",
              *(QUICK_DISTILL if quick else [])]
    variants = {name: VARIANTS[name] for name in args.variants}
    # a bad budget fails before the data is made
    check_grid(RECIPE, variants, args.seeds, budget)
    aligned, pair_files = prepare_synth(args.data, args.identities, args.images_per_identity,
                                        args.pairs)
    common = [f"data.train={aligned}", f"data.val_pairs={pair_files}", *budget]
    results = run_grid(RECIPE, variants, args.seeds, args.out, common=common)
    summary = summarise(results)
    extra = {}
    for name in variants:
        runs = [args.out / name / f"seed{s}" for s in args.seeds]
        train_s = [m["train"]["steps"] * args.batch_size  # images / (images per second)
                   / m["train"]["images_per_second"] for m in results[name].values()]
        extra[name] = {**gaps(summary[name]), **similarity_means(runs),
                       "train (s)": f"{mean_spread(train_s)[0]:.0f}"}
    figure = args.doc.parent / "ddl_histograms.png"
    source = args.out / "arcface+ddl" / f"seed{args.seeds[0]}" / "ddl_histograms.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    if source.exists():
        write_atomic(figure, lambda tmp: shutil.copyfile(source, tmp))
    command = "facelab experiment ddl " + " ".join(shlex.quote(a) for a in _flags(args, quick))
    intro = ("ArcFace (demo recipe: tiny CNN, emb 128, s=32, m=0.5) with the same budget per "
             f"variant: {args.steps} steps, batch {args.batch_size}, seeds "
             f"{', '.join(map(str, args.seeds))}, on a synthetic set of {args.identities} "
             f"identities x {args.images_per_identity} photos; 10-fold verification accuracy (%) "
             f"on {args.pairs} pairs per set, mean ± spread (population std) over seeds. Easy: "
             "|yaw| < 30° and head width >= 40 px; hard: the other training photos "
             "(attributes.csv). Gaps in accuracy points. T/S± cos: mean held-out cosine of "
             "teacher (easy) / student (hard) positive pairs and hardest negatives after "
             "training (16 identities held out, ddl_after.json).\n\n" + _VARIANT_TEXT)
    notes = (f"Wall time of this call {time.perf_counter() - start:.0f} s (runs reused from an "
             "earlier call count ~0 s; `train (s)`: mean training-loop seconds per run, batches "
             "loaded included, evaluation not). Histograms of the first seed's `arcface+ddl` run "
             "(held-out identities, before and after training):"
             f"\n\n![DDL histograms]({figure.name})")
    write_report(args.doc, "Distribution distillation loss (DDL) on synthetic faces", command,
                 intro, markdown_table(summary, extra=extra), notes)
    log.info("experiment ddl: table in %s", args.doc)
    return 0


_VARIANT_TEXT = ("Variants: `arcface`: uniform batches over all identities; `arcface+batch`: "
                 "DDL's batches (batch/8 identities x (2 easy + 2 hard + 4 random) images per "
                 "batch, 16 identities held out) with the DDL weights at 0, the control for the "
                 "batch composition; `arcface+ddl`: the same batches with DDL (KL+ 0.1, "
                 "KL− 0.02, order 0.5, teacher histograms detached, histogram nodes at the bin "
                 "middles: `distill.detach_teacher=true distill.bin_nodes=mid`).")


def _flags(args: argparse.Namespace, quick: bool) -> list[str]:
    if quick:
        return ["--quick"]
    return ["--identities", str(args.identities), "--images-per-identity",
            str(args.images_per_identity), "--pairs", str(args.pairs), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--seeds", *map(str, args.seeds),
            "--threads", str(args.threads), "--variants", *args.variants]
