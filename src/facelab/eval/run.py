"""`facelab eval`: a checkpoint against .bin pair sets -> table, metrics.json, roc.png."""

from pathlib import Path

from facelab.data.pairsets import load_bin
from facelab.eval.embed import evaluate_pairsets
from facelab.eval.report import plot_roc, without_curves, write_json_atomic
from facelab.train.checkpoint import resolve_checkpoint
from facelab.train.task import load_model


def evaluate_checkpoint(
    checkpoint: str | Path, pairs: list[Path], out: Path | None = None, batch_size: int = 256, flip: bool = True
) -> dict[str, dict]:
    """Evaluate every pair set with the checkpoint's own preprocessing; write `out/metrics.json` and
    `out/roc.png` (default out: `<run folder>/eval`)."""
    path = resolve_checkpoint(checkpoint)
    model, preprocess = load_model(path)
    sets = {Path(p).stem: load_bin(p) for p in pairs}
    results = evaluate_pairsets(model, sets, batch_size=batch_size, flip=flip, preprocess=preprocess)
    out = Path(out) if out is not None else path.parent / "eval"
    plot_roc(results, out / "roc.png")
    public = without_curves(results)
    write_json_atomic(out / "metrics.json", {"checkpoint": str(path), "flip": flip, "pairs": public})
    return public
