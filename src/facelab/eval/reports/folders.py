"""The report folder of each evaluation command: metrics.json, plots, tables and index.html.

metrics.json holds the results without their curves (ROC points, score histograms), which go to
the plots. The PNG plots stay beside the page for other uses; index.html carries them inline
(data: URIs, reports/html.py), so the page alone, copied anywhere, shows everything.

`facelab eval` (pair sets): metrics.json, roc.png, scores.png (genuine vs impostor cosine
histograms), index.html. `facelab ijb`: metrics.json, roc.png, table.md, scores.png (1:1
template-pair scores per mode), cmc.png (1:N), index.html. `facelab search`: metrics.json,
candidates.json, cmc.png, index.html.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from facelab.eval.reports.html import write_html
from facelab.eval.reports.plots import plot_cmc, plot_ijb_roc, plot_roc, plot_score_histograms
from facelab.eval.reports.tables import format_identification_table, format_ijb_table, format_table
from facelab.io import write_atomic
from facelab.jsonfile import write_json_atomic

CURVES = ("tpr", "fpr", "histogram")  # result entries drawn in the plots, kept out of metrics.json


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def without_curves(results: dict[str, dict]) -> dict[str, dict]:
    """{name: result} minus the ROC arrays (tpr, fpr) and the score histogram of each result."""
    return {name: {k: v for k, v in r.items() if k not in CURVES} for name, r in results.items()}


def write_pairs_report(
    out: Path, results: dict[str, dict], run: Mapping[str, object], checks: Mapping | None
) -> dict[str, dict]:
    """roc.png, metrics.json ({**run, "pairs", "data_checks"}) and write_pairs_page of
    evaluate_pair_sets results; returns the results as written to metrics.json."""
    out = Path(out)
    plot_roc(results, out / "roc.png")
    public = without_curves(results)
    write_json_atomic(out / "metrics.json", {**run, "pairs": public, "data_checks": checks})
    write_pairs_page(out, results, run, checks)
    return public


def write_pairs_page(
    out: Path, results: Mapping[str, dict], run: Mapping[str, object], checks: Mapping | None
) -> None:
    """scores.png and index.html of verify_pairs results carrying a "histogram" (after roc.png)."""
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


def write_ijb_report(result: dict, out: Path) -> None:
    """out/metrics.json (no curves), out/roc.png, out/table.md, and write_ijb_page."""
    out = Path(out)
    plot_ijb_roc(result["verification"], out / "roc.png", f"{result.get('dataset', 'IJB')} 1:1")
    public = {**result, "verification": without_curves(result["verification"])}
    write_json_atomic(out / "metrics.json", public)
    table = format_ijb_table(result) + "\n"
    write_atomic(out / "table.md", lambda tmp: tmp.write_text(table, encoding="utf-8"))
    write_ijb_page(out, result, table)


def write_ijb_page(out: Path, result: Mapping, table: str) -> None:
    """scores.png, cmc.png (with 1:N) and index.html of an IJB result (after roc.png)."""
    out = Path(out)
    name = result.get("dataset", "IJB")
    ver = result["verification"]
    images = [(f"{name} 1:1 ROC", "roc.png")]
    hists = {f"{name} 1:1 {mode}": r["histogram"] for mode, r in ver.items() if "histogram" in r}
    if hists:
        plot_score_histograms(hists, out / "scores.png")
        images.append((f"{name} 1:1 genuine vs impostor template-pair scores", "scores.png"))
    ident = result.get("identification")
    galleries = (ident or {}).get("galleries", {})
    curves = {g: r["cmc_curve"] for g, r in galleries.items() if "cmc_curve" in r}
    if curves:
        plot_cmc(curves, out / "cmc.png", f"{name} 1:N ({ident['mode']})")
        images.append((f"{name} 1:N CMC", "cmc.png"))
    run = {
        "dataset": name,
        "images": result.get("images"),
        "templates": result.get("templates"),
        "created": _now(),
    }
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


def write_search_report(
    out: Path, metrics: dict, candidates: list[dict], curve: Mapping | None
) -> None:
    """metrics.json, candidates.json and write_search_page of a `facelab search` result."""
    write_json_atomic(Path(out) / "metrics.json", metrics)
    write_json_atomic(Path(out) / "candidates.json", candidates)
    write_search_page(out, metrics, curve)


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
            "score": "cosine of L2-normalised embeddings (f(x) + f(flip x)); "
            "gallery: one mean template per identity",
            "index": metrics.get("index"),
            "scoring": metrics.get("scoring"),
            "cmc": "rank = 1 + non-mate gallery templates scoring >= the best mate",
            "tpir_at_fpir": "threshold from the non-mated top-1 scores; "
            "alarm when top-1 > threshold",
        }
    }
    write_html(
        out / "index.html",
        "facelab search: 1:N identification",
        run,
        conventions,
        [("1:N search", format_identification_table({"search": metrics}))],
        images,
        metrics.get("data_checks"),
    )
