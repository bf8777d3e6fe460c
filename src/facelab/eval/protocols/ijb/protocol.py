"""The IJB 1:1 and 1:N protocol from per-image features, and end to end from a model.

evaluate_ijb is the protocol's entry in facelab.eval.protocols.PROTOCOLS: the IJB folder is read,
checked against the model's preprocessing (facelab.eval.checks.metadata), every loose crop aligned
and embedded (or the features read from a cache), and the report written when `out` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facelab.errors import FacelabError
from facelab.eval.checks.metadata import check_all, describe_ijb
from facelab.eval.protocols import identification
from facelab.eval.protocols.ijb.features import extract_features
from facelab.eval.protocols.ijb.meta import GALLERIES, IJBMeta, read_ijb_meta
from facelab.eval.protocols.ijb.roc import FARS, verification_metrics
from facelab.eval.protocols.ijb.templates import (
    DEFAULT_MODE,
    image_features,
    pair_scores,
    parse_mode,
    template_features,
)
from facelab.eval.reports.folders import write_ijb_report
from facelab.eval.reports.plots import score_histogram
from facelab.io import check_output_folder, write_atomic

CMC_RANKS = 20  # the report's CMC curve: ranks 1..20


def _convention(mode: str) -> dict:
    return {
        "protocol": "insightface ijb_11.py (1:1) / ijb_1n.py (1:N) on the IJB_release meta files",
        "mode": mode,
        "image_feature": "f(x) [+ f(flip x) if F1] -> [L2-normalise if N1] "
        "-> [x detector score if D1]",
        "template": "sum over media of the mean image feature within the media, L2-normalised",
        "score": "cosine of the two template features",
        "tar_at_far": "ROC points as sklearn roc_curve (drop_intermediate); "
        "FPR nearest the target, ties -> largest TPR",
        "tar_at_far_strict": "largest TPR with FPR <= target on the full ROC; "
        "accept score >= threshold",
    }


def verify_ijb(meta: IJBMeta, feats, flip_feats=None, mode: str = DEFAULT_MODE, fars=FARS) -> dict:
    """1:1 verification of every template pair from per-image features (rows aligned with meta)."""
    x = image_features(feats, flip_feats, meta.scores, mode)
    tids, tf = template_features(x, meta.templates, meta.medias, select=np.unique(meta.pairs))
    scores = pair_scores(tids, tf, meta.pairs)  # [pairs] cosines
    result = verification_metrics(meta.labels, scores, fars)
    result["convention"] = _convention(mode)
    result["histogram"] = score_histogram(meta.labels, scores)  # for the report's scores.png
    return result


def identify_ijb(
    meta: IJBMeta,
    feats,
    flip_feats=None,
    mode: str = DEFAULT_MODE,
    gallery: str = "separate",
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
) -> dict:
    """1:N search of the mixed probes against each gallery ("separate": G1 and G2 and their mean;
    "union": one gallery G1+G2, closed set; "both"). Each gallery also gets "cmc_curve" (ranks
    1..CMC_RANKS or max(ranks)) for the report's CMC plot; "cmc" holds the asked ranks only."""
    if gallery not in ("separate", "union", "both"):
        raise FacelabError(
            f"IJB 1:N gallery must be 'separate', 'union' or 'both', got {gallery!r}"
        )
    x = image_features(feats, flip_feats, meta.scores, mode)
    g_names = GALLERIES[meta.prefix]
    lists = {g: identification.read_1n_csv(meta.meta_file(f"1N_gallery_{g}.csv")) for g in g_names}
    probe_t, probe_s = identification.read_1n_csv(meta.meta_file("1N_probe_mixed.csv"))
    if gallery != "separate":
        lists["+".join(g_names)] = identification.merge_lists(*lists.values())
    if gallery == "union":
        lists = {k: v for k, v in lists.items() if "+" in k}
    ptids, pf = template_features(x, meta.templates, meta.medias, select=probe_t)
    curve_ranks = list(range(1, max(CMC_RANKS, *ranks) + 1))
    out = {}
    for name, (gt, gs) in lists.items():
        _, gf = template_features(x, meta.templates, meta.medias, select=gt)
        out[name] = identification.search(pf, probe_s, gf, gs, curve_ranks, fpirs)
        cmc = out[name]["cmc"]
        out[name]["cmc"] = {str(k): cmc[str(k)] for k in ranks}
        out[name]["cmc_curve"] = {"ranks": curve_ranks, "rate": [cmc[str(k)] for k in curve_ranks]}
    separate = [out[g] for g in g_names if g in out]
    if len(separate) == 2:
        out["mean"] = identification.mean_results(separate)
        curves = np.array([r["cmc_curve"]["rate"] for r in separate], dtype=np.float64)  # None: nan
        rates = np.mean(curves, 0)
        out["mean"]["cmc_curve"] = {
            "ranks": curve_ranks,
            "rate": [None if np.isnan(v) else v for v in rates.tolist()],
        }
    return {"mode": mode, "galleries": out}


def evaluate_ijb_features(
    meta: IJBMeta,
    feats: np.ndarray,
    flip_feats: np.ndarray | None = None,
    modes: Sequence[str] = (DEFAULT_MODE,),
    fars: Sequence[float] = FARS,
    one_to_n: bool | None = None,
    mode_1n: str = DEFAULT_MODE,
    gallery: str = "separate",
) -> dict:
    """The whole protocol from per-image features: {"verification": {mode: ...},
    "identification": ...}.

    one_to_n None: run 1:N when the gallery/probe lists exist.
    """
    if len(feats) != len(meta.names):
        raise FacelabError(f"IJB: {len(feats)} feature rows for {len(meta.names)} crops")
    result = {
        "dataset": meta.prefix.upper(),
        "images": len(meta.names),
        "templates": int(len(np.unique(meta.templates))),
        "verification": {m: verify_ijb(meta, feats, flip_feats, m, fars) for m in modes},
    }
    has_1n = meta.meta_file("1N_probe_mixed.csv").exists()
    if one_to_n or (one_to_n is None and has_1n):
        result["identification"] = identify_ijb(meta, feats, flip_feats, mode_1n, gallery)
    return result


def evaluate_ijb(
    model: nn.Module,
    root: Path,
    *,
    preprocess: dict | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    out: Path | None = None,
    dataset: str | None = None,
    modes: Sequence[str] = (DEFAULT_MODE,),
    workers: int = 2,
    features: Path | None = None,
    allow_mismatch: Sequence[str] = (),
    **kw,
) -> dict:
    """Align + embed every loose crop of the IJB folder `root`, then `evaluate_ijb_features`
    (kw: fars, one_to_n, mode_1n, gallery).

    features: an .npz cache of (feats, flip_feats, names); read when it exists, written otherwise.
    out: write metrics.json, roc.png, scores.png, cmc.png (with 1:N), table.md and index.html there.
    The crops are first checked against `preprocess` (checks.metadata.describe_ijb): a
    mismatch is refused unless its field is in allow_mismatch (or "all"); the record is
    result["data_checks"]. `out` and the folder of `features` are proven writable before anything
    is read or embedded.
    """
    for folder in (out, None if features is None else Path(features).parent):
        if folder is not None:
            check_output_folder(Path(folder))
    meta = read_ijb_meta(root, dataset)
    for m in modes:
        parse_mode(m)
    checks = check_all(preprocess, {"IJB loose crops": describe_ijb(preprocess)}, allow_mismatch)
    feats, flip_feats = _cached_features(
        model, meta, features, batch_size, preprocess, device, workers
    )
    result = evaluate_ijb_features(meta, feats, flip_feats, modes, **kw)
    result["root"], result["data_checks"] = str(meta.root), checks
    if out is not None:
        write_ijb_report(result, Path(out))
    return result


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a path
        np.savez(f, **arrays)


def _cached_features(model, meta, path, batch_size, preprocess, device, workers):
    if path is not None and Path(path).exists():
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["names"], meta.names):
                raise FacelabError(f"{path}: cached features are for other crops than {meta.root}")
            return z["feats"], (z["flip_feats"] if "flip_feats" in z else None)
    feats, flip_feats = extract_features(model, meta, batch_size, True, preprocess, device, workers)
    if path is not None:
        # flip_feats: never None here
        arrays = {"feats": feats, "flip_feats": flip_feats, "names": meta.names}
        write_atomic(Path(path), lambda tmp: _savez(tmp, arrays))
    return feats, flip_feats
