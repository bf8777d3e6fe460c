"""Evaluation: pair verification (10-fold, VAL@FAR), embedding, reports."""

from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.eval.embed import embed_images, evaluate_pairsets
from facelab.eval.report import format_table, plot_roc
from facelab.eval.verification import verify_pairs, verify_pairs_reference
from facelab.jsonfile import write_json_atomic

__all__ = [
    "PREPROCESS_DEFAULT",
    "embed_images",
    "evaluate_pairsets",
    "format_table",
    "plot_roc",
    "verify_pairs",
    "verify_pairs_reference",
    "write_json_atomic",
]
