"""The report folder of each evaluation entry: plots and `index.html` next to metrics.json.

The PNG plots stay beside the page for other uses; index.html carries them inline (data: URIs,
facelab.eval.html), so the page alone, copied anywhere, shows everything.

`facelab eval` (pair sets): roc.png, scores.png (genuine vs impostor cosine histograms), index.html.
`facelab ijb`: roc.png, scores.png (1:1 template-pair scores per mode), cmc.png (1:N), index.html.
`facelab search`: cmc.png, index.html.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from facelab.eval import identification
from facelab.eval.html import write_html
from facelab.eval.plots import plot_cmc, plot_score_histograms
from facelab.eval.report import format_table


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def write_pairs_page(out: Path, results: Mapping[str, dict], run: Mapping[str, object], checks: Mapping | None) -> None:
    """scores.png and index.html for verify_pairs results that carry a "histogram" (roc.png is written before)."""
    out = Path(out)
    hists = {name: r["histogram"] for name, r in results.items() if "histogram" in r}
    images = [("ROC: mean over the 10 folds (log FPR)", "roc.png")]
    if hists:
        plot_score_histograms(hists, out / "scores.png", "cosine similarity (1 - squared L2 / 2)")
        images.append(("genuine vs impostor scores", "scores.png"))
    conventions = {name: r["convention"] for name, r in results.items() if "convention" in r}
    write_html(
        out / "index.html",
        "facelab eval: pair verification",
        {**run, "created": _now()},
        conventions,
        [("pair verification", format_table(results))],
        images,
        checks,
    )


def write_ijb_page(out: Path, result: Mapping, table: str) -> None:
    """scores.png, cmc.png (with 1:N) and index.html of an IJB result (roc.png is written before)."""
    out = Path(out)
    name = result.get("dataset", "IJB")
    ver = result["verification"]
    images = [(f"{name} 1:1 ROC", "roc.png")]
    hists = {f"{name} 1:1 {mode}": r["histogram"] for mode, r in ver.items() if "histogram" in r}
    if hists:
        plot_score_histograms(hists, out / "scores.png")
        images.append((f"{name} 1:1 genuine vs impostor template-pair scores", "scores.png"))
    ident = result.get("identification")
    curves = {g: r["cmc_curve"] for g, r in (ident or {}).get("galleries", {}).items() if "cmc_curve" in r}
    if curves:
        plot_cmc(curves, out / "cmc.png", f"{name} 1:N ({ident['mode']})")
        images.append((f"{name} 1:N CMC", "cmc.png"))
    run = {"dataset": name, "images": result.get("images"), "templates": result.get("templates"), "created": _now()}
    run.update({k: result[k] for k in ("checkpoint", "root") if k in result})
    conventions = {f"1:1 {mode}": r["convention"] for mode, r in ver.items() if "convention" in r}
    write_html(
        out / "index.html",
        f"facelab ijb: {name}",
        run,
        conventions,
        [(f"{name} results", table)],
        images,
        result.get("data_checks"),
    )


def write_search_page(out: Path, metrics: Mapping, curve: Mapping | None) -> None:
    """cmc.png (when a curve is given) and index.html of a `facelab search` result."""
    out = Path(out)
    images = []
    if curve is not None:
        plot_cmc({"search": curve}, out / "cmc.png", f"1:N search ({metrics.get('index')} index)")
        images.append(("CMC: identification rate against rank", "cmc.png"))
    keys = ("checkpoint", "gallery_dir", "probes_dir", "gallery", "probes", "mated", "non_mated")
    run = {**{k: metrics[k] for k in keys if k in metrics}, "created": _now()}
    conventions = {
        "1:N search": {
            "score": "cosine of L2-normalised embeddings (f(x) + f(flip x)); gallery: one mean template per identity",
            "index": metrics.get("index"),
            "scoring": metrics.get("scoring"),
            "cmc": "rank = 1 + non-mate gallery templates scoring >= the best mate",
            "tpir_at_fpir": "threshold from the non-mated top-1 scores; alarm when top-1 > threshold",
        }
    }
    write_html(
        out / "index.html",
        "facelab search: 1:N identification",
        run,
        conventions,
        [("1:N search", identification.format_table({"search": metrics}))],
        images,
        metrics.get("data_checks"),
    )
