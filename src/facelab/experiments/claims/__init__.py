"""`facelab experiment claims`: each paper's claim measured on the synthetic faces by its
mechanism and its outcome, written to docs/claims.md.

CLAIMS maps a claim name to the module that measures it (`measure(ctx) -> Result`, see
facelab.experiments.claims.base) and a one-line title; modules are imported only when their claim
runs. The order of the dict is the order of the report.
"""

from typing import NamedTuple


class Claim(NamedTuple):
    module: str  # e.g. "facelab.experiments.claims.feature_circle"
    title: str


_M = "facelab.experiments.claims."
CLAIMS: dict[str, Claim] = {
    "feature_circle": Claim(_M + "feature_circle",
                            "ArcFace's feature-space figure: 8 identities in 2-D"),
    "margins_separate": Claim(_M + "margins_separate", "Margins separate classes"),
    "heads_league": Claim(_M + "heads_league", "Heads league at a converged budget"),
    "dail": Claim(_M + "dail", "DAIL: shared identities and dataset invariance"),
    "ddl": Claim(_M + "ddl", "DDL: the teacher-student gap"),
    "quality_norm": Claim(_M + "quality_norm", "Quality in the feature norm (MagFace, AdaFace)"),
    "adaface_lowres": Claim(_M + "adaface_lowres", "AdaFace on low-quality faces"),
    "hard_negatives": Claim(_M + "hard_negatives",
                            "CurricularFace and MV-Softmax: weight on hard negatives"),
    "subcenter_cleaning": Claim(_M + "subcenter_cleaning",
                                "Sub-center ArcFace cleans noisy labels"),
    "pairs_vs_classification": Claim(_M + "pairs_vs_classification",
                                     "Pair losses vs classification heads"),
}

__all__ = ["CLAIMS", "Claim"]
