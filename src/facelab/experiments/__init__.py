"""Experiment commands: train several variants with the same budget and seeds, write a table to docs/.

`facelab experiment NAME` runs `EXPERIMENTS[NAME]` (a module path); each module defines
`add_arguments(parser)` and `run(args) -> dict`. facelab.experiments.common holds what they share:
the synthetic data, one training run per (variant, seed) that is skipped when already complete (an
interrupted experiment resumes where it stopped), and the mean ± spread table.
"""

EXPERIMENTS: dict[str, str] = {}  # name -> module, e.g. "heads": "facelab.experiments.heads"
EXPERIMENTS["heads"] = "facelab.experiments.heads"
EXPERIMENTS["ddl"] = "facelab.experiments.ddl"
EXPERIMENTS["pairs"] = "facelab.experiments.pairs"
EXPERIMENTS["dail"] = "facelab.experiments.dail"
