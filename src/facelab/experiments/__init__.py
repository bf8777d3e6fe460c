"""Experiment commands: train variants with one budget and seeds, write a table to docs/.

`facelab experiment NAME` runs the module `EXPERIMENTS[NAME].module`; each module defines
`add_arguments(parser)` and `run(args) -> int`. This registry holds names, module paths and
one-line helps only, so that the command line lists the experiments without importing them (nor
the training code behind them). facelab.experiments.common holds what the modules share: the
demo recipe, the synthetic data, one training run per (variant, seed) that is skipped when already
complete (an interrupted experiment resumes where it stopped), and the mean ± spread table.
"""

import importlib
import types
from typing import NamedTuple


class Experiment(NamedTuple):
    module: str  # e.g. "facelab.experiments.heads"
    help: str  # the line `facelab experiment --help` shows


EXPERIMENTS: dict[str, Experiment] = {
    "heads": Experiment(
        "facelab.experiments.heads",
        "heads: every shipped head recipe (configs/heads/*.yaml) with one budget and seed(s) -> "
        "docs/heads.md.",
    ),
    "ddl": Experiment(
        "facelab.experiments.ddl",
        "ddl: ArcFace with and without DDL (hard-sample distillation), same budget and seeds -> "
        "docs/ddl.md.",
    ),
    "pairs": Experiment(
        "facelab.experiments.pairs",
        "Pair losses vs a margin head: contrastive, triplet (semi-hard), margin loss "
        "(distance-weighted and histogram mining)",
    ),
    "claims": Experiment(
        "facelab.experiments.claims.run",
        "claims: each paper's claim measured by its mechanism and outcome, with a decision rule "
        "fixed before running -> docs/claims.md.",
    ),
    "dail": Experiment(
        "facelab.experiments.dail",
        "DAIL: single dataset vs naive merge vs dataset-aware softmax (+ crossing dropout, "
        "+ GRL two-stage).",
    ),
}


def load_experiment(name: str) -> types.ModuleType:
    """The module of experiment `name` (imported on first use: it pulls in the training code)."""
    return importlib.import_module(EXPERIMENTS[name].module)
