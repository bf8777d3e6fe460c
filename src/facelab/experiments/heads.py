"""heads: every shipped head recipe (configs/heads/*.yaml) with one budget and seed(s) ->
docs/heads.md.

Each recipe trains on the same synthetic set (`prepare_synth`) for the same number of steps and
batch size; the table gives synth-lfw / synth-cfp / synth-lowres verification accuracy per head
(mean ± std over seeds). `--quick`: a tiny set and 2 steps per head, output in a temporary folder
(a smoke test).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import tempfile
import time
from pathlib import Path

from facelab import CONFIGS
from facelab.errors import FacelabError
from facelab.experiments.common import (
    check_grid,
    markdown_table,
    prepare_synth,
    run_grid,
    summarise,
    write_report,
)
from facelab.heads import MARGINS

log = logging.getLogger(__name__)
RECIPES = CONFIGS / "heads"
QUICK = {"identities": 12, "images_per_identity": 4, "pairs": 40, "steps": 2, "batch_size": 8}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data/heads-synth"),
                   help="synthetic set (made if missing)")
    p.add_argument("--out", type=Path, default=Path("runs/experiment-heads"),
                   help="one run folder per head")
    p.add_argument("--doc", type=Path, default=Path("docs/heads.md"))
    p.add_argument("--identities", type=int, default=200)
    p.add_argument("--images-per-identity", type=int, default=20)
    p.add_argument("--pairs", type=int, default=1000, help="pairs per verification set")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="+", default=None,
                   help="these recipes only (names in configs/heads)")
    p.add_argument("--quick", action="store_true",
                   help="tiny data, 2 steps per head, output to a temp folder")


def recipes(only: list[str] | None = None) -> dict[str, Path]:
    """{name: path} of the shipped head recipes (all, or those named in `only`): the MARGINS heads
    in registry (publication) order, then the variants (groupface, AdaptiveFace options) by name."""
    files = {p.stem: p for p in RECIPES.glob("*.yaml")}
    if not files:
        raise FacelabError(f"experiment heads: no head recipes (*.yaml) in {RECIPES}; is the "
                           "package installed with its configs (package-data configs/**/*.yaml)?")
    order = [*(m for m in MARGINS if m in files), *sorted(set(files) - set(MARGINS))]
    found = {n: files[n] for n in order}
    unknown = sorted(set(only or ()) - set(found))
    if unknown:
        raise FacelabError(f"experiment heads: unknown recipe {unknown[0]!r}; valid: "
                           f"{', '.join(found)}")
    return {n: p for n, p in found.items() if only is None or n in only}


def run(args: argparse.Namespace) -> int:
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="facelab-heads-") as tmp:
            root = Path(tmp)
            plan = {**vars(args), **QUICK, "data": root / "data", "out": root / "runs",
                    "doc": root / "heads.md"}
            return _run(argparse.Namespace(**plan), quick=True)
    return _run(args, quick=False)


def _run(args: argparse.Namespace, quick: bool) -> int:
    start = time.perf_counter()
    plan = recipes(args.only)  # before making data: no recipes (or an unknown name) fails at once
    budget = [f"train.steps={args.steps}", f"data.batch_size={args.batch_size}",
              "train.checkpoint_every=100000", "train.progress=false", "train.tensorboard=false",
              f"schedule.warmup_steps={max(1, args.steps // 12)}"]
    for name, path in plan.items():  # a bad budget fails before the data is made
        check_grid(path, {name: []}, args.seeds, budget)
    aligned, pair_files = prepare_synth(args.data, args.identities, args.images_per_identity,
                                        args.pairs)
    common = [f"data.train={aligned}", f"data.val_pairs={pair_files}", *budget]
    results = {}
    for name, path in plan.items():
        t0 = time.perf_counter()
        results.update(run_grid(path, {name: []}, args.seeds, args.out, common=common))
        log.info("experiment heads: %s done in %.0f s", name, time.perf_counter() - t0)
    speed = {n: [m["train"].get("images_per_second", 0.0) for m in runs.values()]
             for n, runs in results.items()}
    extra = {n: {"train img/s": f"{sum(v) / len(v):.0f}"} for n, v in speed.items()}
    command = "facelab experiment heads " + " ".join(shlex.quote(a) for a in _flags(args, quick))
    intro = ("Every recipe in `src/facelab/configs/heads/` trained with the same budget: "
             f"{args.steps} steps, batch {args.batch_size}, seed(s) "
             f"{', '.join(map(str, args.seeds))}, on a synthetic set of {args.identities} "
             f"identities x {args.images_per_identity} photos; accuracy (%) of 10-fold "
             f"verification on {args.pairs} pairs per set.")
    missing = [n for n in recipes() if n not in results]
    notes = (f"Wall time of this call {time.perf_counter() - start:.0f} s (finished runs are "
             "reused, not retrained); `train img/s` is each run's training speed, machine load "
             "included. Heads whose METHODS.md scale is 64 use s=32 here, as demo.yaml does for "
             "the tiny 128-d model. "
             f"Seeds: {len(args.seeds)}")
    if len(args.seeds) == 1:
        notes += ("; with one seed no spread is measured, so small differences are not evidence "
                  "of a better head.")
    if missing:
        notes += (f"\n\nNot in this table ({len(missing)} of {len(missing) + len(results)} "
                  f"recipes): {', '.join(missing)}. The same command without `--only` trains "
                  "them with the same budget and reuses the finished runs.")
    write_report(args.doc, "Margin heads on synthetic faces", command, intro,
                 markdown_table(summarise(results), extra=extra), notes)
    log.info("experiment heads: table in %s", args.doc)
    return 0


def _flags(args: argparse.Namespace, quick: bool) -> list[str]:
    if quick:
        return ["--quick"]
    flags = ["--identities", str(args.identities), "--images-per-identity",
             str(args.images_per_identity), "--pairs", str(args.pairs), "--steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--seeds", *map(str, args.seeds)]
    return flags + (["--only", *args.only] if args.only else [])
