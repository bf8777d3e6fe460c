"""Markdown result tables, as the CLI prints them and index.html shows them (reports/html.py).

One table per protocol: pair verification (accuracy and VAL@FAR, protocols/verification.py),
1:N identification (CMC rank-k and TPIR@FPIR, protocols/identification.py) and IJB 1:1 (TAR at
each FAR per mode, protocols/ijb), followed by its 1:N table.
"""

from __future__ import annotations


def format_table(results: dict[str, dict]) -> str:
    """Markdown of verify_pairs results: set, pairs, accuracy % ± spread, VAL@FAR % ± spread."""
    rows = ["| set | pairs | accuracy (%) | VAL@FAR (%) |", "| --- | ---: | ---: | ---: |"]
    for name, r in results.items():
        far = r.get("convention", {}).get("far_target", float("nan"))
        acc = f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}"
        val = f"{100 * r['val']:.2f} ± {100 * r['val_std']:.2f} @ {far:g}"
        rows.append(f"| {name} | {r['pairs']} | {acc} | {val} |")
    return "\n".join(rows)


def format_identification_table(galleries: dict[str, dict]) -> str:
    """Markdown: per gallery, CMC rank-k (%) and TPIR (%) at each FPIR."""
    first = next(iter(galleries.values()))
    ranks, fpirs = list(first["cmc"]), list(first["tpir_at_fpir"])
    head = [f"rank-{k}" for k in ranks] + [f"TPIR@FPIR={f}" for f in fpirs]
    rows = ["| 1:N gallery | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(head)]
    for name, r in galleries.items():
        vals = [r["cmc"][k] for k in ranks] + [r["tpir_at_fpir"][f] for f in fpirs]
        cells = ["—" if v is None else f"{100 * v:.2f}" for v in vals]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


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
        rows += ["", format_identification_table(result["identification"]["galleries"])]
    return "\n".join(rows)
