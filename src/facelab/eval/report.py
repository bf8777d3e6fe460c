"""Evaluation reports: a results table, ROC plots and JSON, all files written atomically.

Every file goes through `facelab.io.write_atomic`: a reader never sees a half-written file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from facelab.io import write_atomic


def format_table(results: dict[str, dict]) -> str:
    """Markdown table of verify_pairs results: set, pairs, accuracy % ± spread, VAL@FAR % ± spread."""
    rows = ["| set | pairs | accuracy (%) | VAL@FAR (%) |", "| --- | ---: | ---: | ---: |"]
    for name, r in results.items():
        far = r.get("convention", {}).get("far_target", float("nan"))
        acc = f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}"
        val = f"{100 * r['val']:.2f} ± {100 * r['val_std']:.2f} @ {far:g}"
        rows.append(f"| {name} | {r['pairs']} | {acc} | {val} |")
    return "\n".join(rows)


def plot_roc(results: dict[str, dict], path: Path) -> None:
    """Mean ROC (TPR against FPR, log-x) of every set in one figure, saved atomically to path."""
    path = Path(path)
    fig = Figure(figsize=(5, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lowest = 1.0
    for name, r in results.items():
        fpr, tpr = np.asarray(r["fpr"]), np.asarray(r["tpr"])
        keep = fpr > 0  # log axis: FPR 0 has no place
        if keep.any():
            lowest = min(lowest, fpr[keep].min())
        ax.plot(fpr[keep], tpr[keep], label=f"{name} ({100 * r['accuracy']:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(lowest if lowest < 1.0 else 1e-4, 1.0)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(True, which="both", alpha=0.3)
    if results:
        ax.legend(loc="lower right")
    fmt = path.suffix.lstrip(".").lower() or "png"
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt))


def without_curves(results: dict[str, dict]) -> dict[str, dict]:
    """verify_pairs results minus the ROC arrays (tpr, fpr) and score histogram, which go to the plots, not to
    metrics.json."""
    return {name: {k: v for k, v in r.items() if k not in ("tpr", "fpr", "histogram")} for name, r in results.items()}
