"""A self-contained `index.html` per evaluation: run, tables, plots, data checks, conventions.

One file, no external resources: inline CSS, a five-line script that marks the page with
`data-images="<loaded>/<total>"` once every <img> has settled (a broken image gets a red
outline), so a reader (or a headless browser test) sees at once whether the plots loaded, and
every plot inline as a `data:` URI (base64 of the PNG or SVG file written beside the page), so
the page alone, copied or mailed anywhere, shows everything. Every text is HTML-escaped. Tables
come from the markdown tables the CLI prints (reports/tables.py), so the page shows the same
numbers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

from facelab.errors import FacelabError
from facelab.io import write_atomic

_MIME = {".png": "image/png", ".svg": "image/svg+xml"}

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222;\
padding:0 1em}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #bbb;padding:.25em .6em}
th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}img.broken{outline:3px solid red}
.mismatch,.overridden{color:#b00;font-weight:bold}code{background:#f4f4f4;padding:0 .2em}
figure{margin:1em 0}figcaption{color:#555}"""

_SCRIPT = """window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; else imgs[i].className += " broken";
  }
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
});"""


def _text(value: object) -> str:
    """Escaped text of a value; dicts and lists as compact JSON."""
    if isinstance(value, Mapping | list | tuple):
        value = json.dumps(value, default=str, ensure_ascii=False)
    return escape(str(value))


def _cell(tag: str, text: str) -> str:
    numeric = any(c.isdigit() for c in text) and not any(
        c.isalpha() for c in text.replace("e-", "")
    )
    cls = ' class="num"' if tag == "td" and numeric else ""
    return f"<{tag}{cls}>{escape(text)}</{tag}>"


def markdown_table_html(markdown: str) -> str:
    """HTML tables from markdown pipe tables (header row, `---` row, body rows), blank-line
    separated."""
    out = []
    for block in markdown.strip().split("\n\n"):
        rows = [
            [c.strip() for c in line.strip().strip("|").split("|")]
            for line in block.splitlines()
            if line.strip().startswith("|")
        ]
        # drop the --- row
        rows = [r for r in rows if not all(set(c) <= set("-: ") and c for c in r)]
        if not rows:
            continue
        head = "".join(_cell("th", c) for c in rows[0])
        body = "".join("<tr>" + "".join(_cell("td", c) for c in r) + "</tr>" for r in rows[1:])
        out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(out)


def _key_values(items: Mapping[str, object]) -> str:
    rows = "".join(f"<tr><th>{_text(k)}</th><td>{_text(v)}</td></tr>" for k, v in items.items())
    return f"<table><tbody>{rows}</tbody></table>"


def _checks_html(checks: Mapping | None) -> str:
    """The data_checks record of `facelab.eval.checks.metadata.check_all` as one table."""
    if not checks:
        return "<p>No data checks were run.</p>"
    allowed = ", ".join(checks.get("allow_mismatch", [])) or "none"
    head = "".join(f"<th>{h}</th>" for h in ("set", "field", "model", "data", "source", "status"))
    rows = []
    for name, fields in checks.get("sets", {}).items():
        for field, r in fields.items():
            status = _text(r["status"])
            cells = [
                _text(name),
                _text(field),
                _text(r["model"]),
                _text("—" if r["data"] is None else r["data"]),
                _text(r["source"] or "—"),
                f'<span class="{status.replace(" ", "-")}">{status}</span>',
            ]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        f"<p>Mismatches allowed (<code>--allow-mismatch</code>): {escape(allowed)}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_html(
    title: str,
    run: Mapping[str, object],
    conventions: Mapping[str, Mapping],
    tables: Sequence[tuple[str, str]],
    images: Sequence[tuple[str, str]],
    checks: Mapping | None = None,
) -> str:
    """The page: run facts, [(caption, markdown table)], [(caption, image data: URI)],
    conventions, checks. Images must be inline (`image_data_uri`): a page pointing at files
    would lose its plots once copied alone.
    """
    bad = [src[:40] for _, src in images if not src.startswith("data:image/")]
    if bad:
        raise ValueError(f"index.html: images must be data:image/ URIs (image_data_uri), got {bad}")
    parts = [f"<h1>{escape(title)}</h1>", "<h2>Run</h2>", _key_values(run), "<h2>Results</h2>"]
    for caption, table in tables:
        parts += [f"<h3>{escape(caption)}</h3>", markdown_table_html(table)]
    parts.append("<h2>Plots</h2>")
    for caption, src in images:
        parts.append(
            f'<figure><img src="{escape(src, quote=True)}" alt="{escape(caption, quote=True)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    parts += ["<h2>Data checks</h2>", _checks_html(checks), "<h2>Conventions</h2>"]
    for name, conv in conventions.items():
        parts += [f"<h3>{escape(name)}</h3>", _key_values(conv)]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body>\n{body}\n</body></html>\n"
    )


def image_data_uri(path: Path) -> str:
    """A PNG or SVG file as a `data:` URI (base64): an <img> that needs no file beside the page."""
    path = Path(path)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise FacelabError(f"{path}: a report image must be .png or .svg")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FacelabError(
            f"{path}: cannot read the plot for index.html ({e.strerror or e})"
        ) from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def write_html(
    path: Path,
    title: str,
    run: Mapping[str, object],
    conventions: Mapping[str, Mapping],
    tables: Sequence[tuple[str, str]],
    images: Sequence[tuple[str, str | Path]],
    checks: Mapping | None = None,
) -> None:
    """render_html(...) written atomically to path (UTF-8), images given as [(caption, image file)]:
    files relative to the page's folder (plots written beside it), inlined as data: URIs."""
    path = Path(path)
    inline = [(caption, image_data_uri(path.parent / file)) for caption, file in images]
    page = render_html(title, run, conventions, tables, inline, checks)
    write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
