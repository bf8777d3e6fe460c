"""IJB-B / IJB-C template verification (1:1) and search (1:N) on insightface's meta files.

Folder layout (insightface `IJB_release`), `<p>` = `ijbb` or `ijbc`:

    <root>/meta/<p>_face_tid_mid.txt         image_name template_id media_id  (one line per crop)
    <root>/meta/<p>_template_pair_label.txt  template_id_1 template_id_2 label (1 = same subject)
    <root>/meta/<p>_name_5pts_score.txt      image_name x1 y1 ... x5 y5 detector_score
                                             (loose-crop landmarks)
    <root>/meta/<p>_1N_gallery_{G1,G2}.csv   (IJB-B: S1, S2), <p>_1N_probe_mixed.csv
                                             (protocols/identification.py)
    <root>/loose_crop/<image_name>

Protocol (METHODS.md, "Evaluation protocols"; insightface `ijb_11.py` / `ijb_1n.py`): per face crop
the features f(x) and f(flip x) of the un-normalised network output; per mode "N?D?F?" (F1: f(x) +
f(flip x), N1: L2-normalise each image feature, D1: multiply by the detector score; applied in that
order); a media's feature is the mean over its crops, a template's the sum over its media,
L2-normalised; a pair's score is the cosine of its two templates. TAR at each FAR is read on the
ROC (scikit-learn `roc_curve` points, collinear intermediate points dropped) at the point whose FPR
is nearest the target, the largest TPR among equal FPRs (the published rule); "strict" is the
largest TPR with FPR <= target on the full ROC.

Modules: meta (IJBMeta, meta-file readers), features (align + embed), templates (modes, pooling,
pair scores), roc (ROC, TAR@FAR rules), protocol (1:1, 1:N, end to end: evaluate_ijb). The report
(table, ROC plot, files) is in facelab.eval.reports.
"""

from facelab.eval.protocols.ijb.features import extract_features
from facelab.eval.protocols.ijb.meta import (
    GALLERIES,
    IJBMeta,
    read_5pts_score,
    read_face_tid_mid,
    read_ijb_meta,
    read_template_pairs,
)
from facelab.eval.protocols.ijb.protocol import (
    evaluate_ijb,
    evaluate_ijb_features,
    identify_ijb,
    verify_ijb,
)
from facelab.eval.protocols.ijb.roc import (
    FARS,
    roc_curve,
    tar_at_far_nearest,
    tar_at_far_strict,
    verification_metrics,
)
from facelab.eval.protocols.ijb.templates import (
    DEFAULT_MODE,
    image_features,
    pair_scores,
    parse_mode,
    template_features,
)

__all__ = [
    "DEFAULT_MODE",
    "FARS",
    "GALLERIES",
    "IJBMeta",
    "evaluate_ijb",
    "evaluate_ijb_features",
    "extract_features",
    "identify_ijb",
    "image_features",
    "pair_scores",
    "parse_mode",
    "read_5pts_score",
    "read_face_tid_mid",
    "read_ijb_meta",
    "read_template_pairs",
    "roc_curve",
    "tar_at_far_nearest",
    "tar_at_far_strict",
    "template_features",
    "verification_metrics",
    "verify_ijb",
]
