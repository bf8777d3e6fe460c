"""Evaluation of face recognition models: protocols, reports, data checks, commands.

embed.py embeds aligned crops (flip-fused, L2-normalised) for every protocol; protocols/ holds the
protocols (pair sets 10-fold, LFW pairs.txt, IJB, 1:N search, quality) and their registry
PROTOCOLS; reports/ the tables, plots, index.html and report folders; checks/ the data checks
(preprocessing metadata, identity overlap); run.py the commands end to end.
"""

from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.eval.embed import embed_images
from facelab.eval.protocols.verification import verify_pairs
from facelab.eval.reports.plots import plot_roc
from facelab.eval.reports.tables import format_table
from facelab.jsonfile import write_json_atomic

__all__ = [
    "PREPROCESS_DEFAULT",
    "embed_images",
    "format_table",
    "plot_roc",
    "verify_pairs",
    "write_json_atomic",
]
