"""`facelab eval`: a checkpoint against pair sets (.bin files, LFW pairs.txt) -> table, metrics.json, roc.png."""

from pathlib import Path

import numpy as np

from facelab.data.pairsets import load_bin
from facelab.eval.embed import evaluate_pairsets
from facelab.eval.lfw_pairs import load_lfw_pairs
from facelab.eval.report import plot_roc, without_curves, write_json_atomic
from facelab.train.checkpoint import resolve_checkpoint
from facelab.train.task import load_model


def load_pair_sets(bins: list[Path], lfw: tuple[Path, Path] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (images, same)} for `.bin` files (named by their stem) and an LFW `pairs.txt` over an aligned folder."""
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
) -> dict[str, dict]:
    """Evaluate every pair set with the checkpoint's own preprocessing, in one call; write `out/metrics.json`
    (with the conventions used) and `out/roc.png` (default out: `<run folder>/eval`)."""
    path = resolve_checkpoint(checkpoint)
    model, preprocess = load_model(path)
    results = evaluate_pairsets(
        model, sets, batch_size=batch_size, flip=flip, preprocess=preprocess,
        threshold_rule=threshold_rule, spread=spread,
    )
    out = Path(out) if out is not None else path.parent / "eval"
    plot_roc(results, out / "roc.png")
    public = without_curves(results)
    write_json_atomic(out / "metrics.json", {"checkpoint": str(path), "flip": flip, "pairs": public})
    return public
