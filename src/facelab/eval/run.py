"""`facelab eval`: a checkpoint (or exported model) against pair sets (.bin files, LFW pairs.txt) -> table,
metrics.json, plots, index.html (facelab.eval.pages), after checking the data against the model
(facelab.eval.metadata)."""

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch import nn

from facelab.data.pairsets import load_bin
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.eval.lfw_pairs import load_lfw_pairs
from facelab.eval.metadata import check_all, describe_array
from facelab.eval.pages import write_pairs_page
from facelab.eval.plots import score_histogram
from facelab.eval.report import plot_roc, without_curves
from facelab.eval.verification import pair_distances, verify_pairs
from facelab.io import check_output_folder
from facelab.jsonfile import write_json_atomic
from facelab.train.checkpoint import resolve_checkpoint
from facelab.train.task import load_model

log = logging.getLogger(__name__)


def output_folder(checkpoint: str | Path, out: str | Path | None, default: str) -> Path:
    """`out`, or `<the checkpoint's folder>/<default>`, proven writable now (check_output_folder),
    so that a command fails in a second (FacelabError naming the folder), not after its work."""
    folder = Path(out) if out is not None else resolve_checkpoint(checkpoint).parent / default
    return check_output_folder(folder)


def load_pair_sets(bins: list[Path], lfw: tuple[Path, Path] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (images, same)} for `.bin` files (named by their stem) and an LFW `pairs.txt` over an aligned folder."""
    sets = {Path(p).stem: load_bin(p) for p in bins}
    if lfw is not None:
        sets[Path(lfw[0]).stem] = load_lfw_pairs(Path(lfw[0]), Path(lfw[1]))
    return sets


def _evaluate_sets(
    model: nn.Module, sets: dict[str, tuple[np.ndarray, np.ndarray]], preprocess: dict, batch_size: int, flip: bool,
    **verify_kw: object,
) -> dict[str, dict]:
    """verify_pairs on each set, plus its genuine/impostor cosine histogram ("histogram")."""
    results = {}
    for name, (images, same) in sets.items():
        same = np.asarray(same)
        if len(images) != 2 * len(same):
            raise FacelabError(f"pair set {name!r}: {len(images)} images for {len(same)} pairs (need 2 per pair)")
        emb = embed_images(model, images, batch_size=batch_size, flip=flip, preprocess=preprocess)  # [2N, d]
        results[name] = verify_pairs(emb[0::2], emb[1::2], same, **verify_kw)
        cosine = 1.0 - pair_distances(emb[0::2], emb[1::2]) / 2.0  # [N]; exact for unit vectors
        results[name]["histogram"] = score_histogram(same, cosine)
        log.info("%s: accuracy %.4f ± %.4f", name, results[name]["accuracy"], results[name]["accuracy_std"])
    return results


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
    """Evaluate every pair set with the model's own preprocessing, in one call; write `out/metrics.json`
    (with the conventions used and the data checks), `out/roc.png`, `out/scores.png` and `out/index.html`
    (default out: `<run folder>/eval`). checkpoint: a checkpoint file, a run folder or an exported `.onnx`
    model (`facelab export`), whose recorded preprocessing is checked the same way.

    data: {set name: description} (`facelab.eval.metadata.describe_pair_sets`); a set without one is taken as
    a bare insightface .bin. Every set is checked against the model's preprocessing first (image height
    measured); a mismatch is refused unless its field is in allow_mismatch (or "all").
    """
    path = resolve_checkpoint(checkpoint)
    out = output_folder(path, out, "eval")
    model, preprocess = load_model(path)
    described = {name: describe_array(images, (data or {}).get(name)) for name, (images, _) in sets.items()}
    checks = check_all(preprocess, described, allow_mismatch)
    results = _evaluate_sets(
        model, sets, preprocess, batch_size, flip, threshold_rule=threshold_rule, spread=spread
    )
    plot_roc(results, out / "roc.png")
    public = without_curves(results)
    write_json_atomic(
        out / "metrics.json", {"checkpoint": str(path), "flip": flip, "pairs": public, "data_checks": checks}
    )
    write_pairs_page(out, results, {"checkpoint": str(path), "flip": flip}, checks)
    return public
