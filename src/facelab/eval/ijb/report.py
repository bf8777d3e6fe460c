"""IJB report: markdown TAR@FAR table, ROC plot, and the metrics.json / roc.png / table.md writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from facelab.eval import identification
from facelab.eval.pages import write_ijb_page
from facelab.io import write_atomic
from facelab.jsonfile import write_json_atomic


def format_ijb_table(result: dict) -> str:
    """Markdown: TAR (%) at each FAR per mode (published rule), then the 1:N table when present."""
    ver = result["verification"]
    fars = list(next(iter(ver.values()))["tar_at_far"]) if ver else []
    rows = [
        f"| {result.get('dataset', 'IJB')} 1:1 | " + " | ".join(fars) + " | AUC |",
        "| --- |" + " ---: |" * (len(fars) + 1),
    ]
    for mode, r in ver.items():
        cells = [f"{100 * r['tar_at_far'][k]:.2f}" for k in fars]
        rows.append(f"| {mode} | " + " | ".join(cells) + f" | {100 * r['auc']:.2f} |")
    if "identification" in result:
        rows += ["", identification.format_table(result["identification"]["galleries"])]
    return "\n".join(rows)


def plot_ijb_roc(verification: dict[str, dict], path: Path, title: str = "IJB 1:1") -> None:
    """ROC (TPR against log FPR, 1e-6..1) of each mode, saved atomically."""
    path = Path(path)
    fig = Figure(figsize=(5, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for mode, r in verification.items():
        fpr, tpr = np.asarray(r["fpr"]), np.asarray(r["tpr"])
        keep = fpr > 0
        ax.plot(fpr[keep], tpr[keep], label=f"{mode} (AUC {100 * r['auc']:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1.0)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if verification:
        ax.legend(loc="lower right")
    fmt = path.suffix.lstrip(".").lower() or "png"
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt))


def write_ijb_report(result: dict, out: Path) -> None:
    """out/metrics.json (no curves), out/roc.png, out/table.md, and scores.png, cmc.png, index.html
    (facelab.eval.pages.write_ijb_page)."""

    out = Path(out)
    plot_ijb_roc(result["verification"], out / "roc.png", f"{result.get('dataset', 'IJB')} 1:1")
    public = {
        **result,
        "verification": {
            m: {k: v for k, v in r.items() if k not in ("fpr", "tpr", "histogram")}
            for m, r in result["verification"].items()
        },
    }
    write_json_atomic(out / "metrics.json", public)
    table = format_ijb_table(result) + "\n"
    write_atomic(out / "table.md", lambda tmp: tmp.write_text(table, encoding="utf-8"))
    write_ijb_page(out, result, table)
