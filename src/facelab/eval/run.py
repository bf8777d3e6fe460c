"""The evaluation commands end to end: a checkpoint (or an exported .onnx model) in, a report out.

`facelab eval` (evaluate_checkpoint): pair sets (.bin files, LFW pairs.txt) through
protocols.PROTOCOLS["pairs"]. `facelab search` (search_folders): 1:N search of one aligned folder
in another (protocols/search.py). `facelab overlap` (find_overlap): identities shared by two
training sets (checks/overlap.py). Each command first proves its output folder writable, then
checks the data against the model's preprocessing (checks/metadata.py) before any embedding, and
writes its report folder (reports/folders.py). `facelab ijb` is protocols.ijb.evaluate_ijb with
`out`.
"""

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from facelab.data.pairsets import load_bin
from facelab.errors import FacelabError
from facelab.eval.checks.metadata import check_all, describe_array, describe_folder
from facelab.eval.checks.overlap import (
    best_f1,
    candidates,
    check_merge_target,
    merge_folders,
    precision_recall,
    read_truth,
    write_candidates,
)
from facelab.eval.embed import embed_folder, embed_images
from facelab.eval.protocols.gallery_index import GalleryIndex
from facelab.eval.protocols.lfw_pairs import load_lfw_pairs
from facelab.eval.protocols.pairs import evaluate_pair_sets
from facelab.eval.protocols.search import evaluate_search, identity_templates, ranks_from_topk
from facelab.eval.reports.folders import write_pairs_report, write_search_report
from facelab.eval.reports.plots import cmc_from_ranks
from facelab.io import check_output_folder
from facelab.jsonfile import write_json_atomic
from facelab.model import load_model, resolve_checkpoint

log = logging.getLogger(__name__)


def output_folder(checkpoint: str | Path, out: str | Path | None, default: str) -> Path:
    """`out`, or `<the checkpoint's folder>/<default>`, proven writable now (check_output_folder),
    so that a command fails in a second (FacelabError naming the folder), not after its work."""
    folder = Path(out) if out is not None else resolve_checkpoint(checkpoint).parent / default
    return check_output_folder(folder)


def load_pair_sets(
    bins: list[Path], lfw: tuple[Path, Path] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (images, same)} of `.bin` files (named by their stem) and of an LFW `pairs.txt`
    over an aligned folder (named by the stem of pairs.txt)."""
    sets = {Path(p).stem: load_bin(p) for p in bins}
    if lfw is not None:
        sets[Path(lfw[0]).stem] = load_lfw_pairs(Path(lfw[0]), Path(lfw[1]))
    return sets


def evaluate_checkpoint(
    checkpoint: str | Path,
    sets: dict[str, tuple[np.ndarray, np.ndarray]],
    out: Path | None = None,
    batch_size: int = 256,
    flip: bool = True,
    threshold_rule: str = "insightface",
    spread: str = "std",
    data: dict[str, dict] | None = None,
    allow_mismatch: Iterable[str] = (),
) -> dict[str, dict]:
    """Evaluate every pair set with the model's own preprocessing, in one call; write
    `out/metrics.json` (with the conventions used and the data checks), `out/roc.png`,
    `out/scores.png` and `out/index.html` (default out: `<run folder>/eval`). checkpoint: a
    checkpoint file, a run folder or an exported `.onnx` model (`facelab export`), whose recorded
    preprocessing is checked the same way.

    data: {set name: description} (checks.metadata.describe_pair_sets); a set without one is taken
    as a bare insightface .bin. Every set is checked against the model's preprocessing first
    (image height measured); a mismatch is refused unless its field is in allow_mismatch (or
    "all"). Returns the results as written to metrics.json (without curves).
    """
    path = resolve_checkpoint(checkpoint)
    out = output_folder(path, out, "eval")
    model, preprocess = load_model(path)
    data = data or {}
    described = {name: describe_array(images, data.get(name)) for name, (images, _) in sets.items()}
    checks = check_all(preprocess, described, allow_mismatch)
    results = evaluate_pair_sets(
        model,
        sets,
        preprocess=preprocess,
        batch_size=batch_size,
        flip=flip,
        embed=embed_images,
        threshold_rule=threshold_rule,
        spread=spread,
    )
    return write_pairs_report(out, results, {"checkpoint": str(path), "flip": flip}, checks)


def _embed_identities(model, preprocess: dict, root: Path) -> tuple[np.ndarray, np.ndarray, list]:
    """(embeddings float32 [N, d], identity name per image [N], image paths) of root/<identity>/."""
    feats, labels, classes, paths = embed_folder(model, preprocess, root)
    return feats, np.array(classes)[labels], paths


def search_folders(
    checkpoint: str | Path,
    gallery_dir: str | Path,
    probes_dir: str | Path,
    out: str | Path,
    index_kind: str = "exact",
    k: int = 10,
    allow_mismatch: Sequence[str] = (),
) -> dict:
    """Embed two aligned image folders (a sub-folder per identity), search one in the other.

    The gallery holds one template per identity (identity_templates); each probe image is a search,
    mated when its folder name is a gallery identity. Writes out/metrics.json (evaluate_search at
    ranks 1, 5, k) and out/candidates.json (each probe's top-k identities and scores), plus cmc.png
    and index.html (ranks 1..k, from the top-k lists). Both folders are first checked against the
    model's preprocessing (their align.json; checks/metadata.py): a mismatch is refused unless its
    field is in allow_mismatch (or "all"). `out` is proven writable before the model is loaded.
    Returns the metrics.
    """
    if int(k) < 1:
        raise FacelabError(f"facelab search: --k must be >= 1, got {k}")
    out = check_output_folder(Path(out))
    model, preprocess = load_model(checkpoint)
    described = {
        "gallery": describe_folder(Path(gallery_dir)),
        "probes": describe_folder(Path(probes_dir)),
    }
    checks = check_all(preprocess, described, allow_mismatch)
    gallery, gallery_names, _ = _embed_identities(model, preprocess, Path(gallery_dir))
    probes, probe_names, probe_paths = _embed_identities(model, preprocess, Path(probes_dir))
    index = GalleryIndex(*identity_templates(gallery, gallery_names), kind=index_kind)
    metrics = evaluate_search(index, probes, probe_names, ranks=sorted({1, min(5, k), k}))
    metrics.update(
        checkpoint=str(checkpoint), gallery_dir=str(gallery_dir), probes_dir=str(probes_dir)
    )
    metrics["data_checks"] = checks
    scores, rows = index.search(probes, k)
    names = index.ids[np.maximum(rows, 0)]  # [P, k]; rows -1 (IVF misses) have score -inf
    _, rank = ranks_from_topk(names, scores, probe_names)  # [P]; k' + 1: the mate is not listed
    mated = np.isin(probe_names, index.ids)
    curve = cmc_from_ranks(rank[mated], scores.shape[1]) if mated.any() else None
    if curve is not None:
        metrics["cmc_curve"] = curve
    listed = []
    for p in range(len(probes)):
        top = [[str(n), float(v)] for n, v in zip(names[p], scores[p], strict=True) if v > -np.inf]
        listed.append(
            {"probe": str(probe_paths[p]), "identity": str(probe_names[p]), "candidates": top}
        )
    write_search_report(out, metrics, listed, curve)
    rank1 = metrics["cmc"]["1"]
    log.info("1:N search: %d probes, %d identities, rank-1 %s", len(probes), len(index), rank1)
    return metrics


def find_overlap(
    model_run: str | Path,
    a: Path,
    b: Path,
    out: Path,
    truth: Path | None = None,
    threshold: float = 0.5,
    merge: Path | None = None,
    centre: bool = False,
    truth_datasets: tuple[str, str] | None = None,
) -> dict:
    """Embed both folders with the run's model, write candidates.csv and overlap.json to `out`
    (checks/overlap.py). `out` and `merge` (new, in a writable folder) are checked first."""
    out = check_output_folder(Path(out))
    if merge is not None:
        check_merge_target(Path(merge))
    model, preprocess = load_model(resolve_checkpoint(model_run))
    feats_a, names_a, _ = _embed_identities(model, preprocess, Path(a))
    feats_b, names_b, _ = _embed_identities(model, preprocess, Path(b))
    rows = candidates(feats_a, names_a, feats_b, names_b, centre)
    write_candidates(out / "candidates.csv", rows)
    summary: dict = {
        "a": str(a),
        "b": str(b),
        "threshold": threshold,
        "centre": centre,
        "called": sum(r["similarity"] >= threshold for r in rows),
    }
    if truth is not None:
        pairs = read_truth(truth, truth_datasets, Path(a), Path(b))
        summary["at_threshold"] = precision_recall(rows, pairs, threshold)
        summary["best_f1"] = best_f1(rows, pairs)
    if merge is not None:
        merged = merge_folders(Path(a), Path(b), rows, threshold, Path(merge))
        summary["merge"] = {"out": str(merge), **merged}
    write_json_atomic(out / "overlap.json", summary)
    return summary
