"""Evaluation reports: histograms and CMC against loops, the pages of eval / ijb / search,
index.html in Chromium."""

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest
import torch
from tests.references.ijb_fixture import write_ijb_fixture
from torch import nn

from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.errors import FacelabError
from facelab.eval import run
from facelab.eval.checks.metadata import check_all, describe_array
from facelab.eval.protocols import ijb
from facelab.eval.protocols.verification import pair_distances, verify_pairs
from facelab.eval.reports.folders import write_pairs_page
from facelab.eval.reports.html import markdown_table_html, render_html
from facelab.eval.reports.plots import cmc_figure, cmc_from_ranks, plot_roc, score_histogram

BROWSER = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
    None,
)


def test_score_histogram_matches_loop():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(-1, 1, 300), [-1.0, 1.0, 1.0 + 1e-9, 0.0]])
    same = rng.random(len(scores)) < 0.4
    h = score_histogram(same, scores, bins=8)
    genuine, impostor = [0] * 8, [0] * 8
    for s, g in zip(scores, same, strict=True):
        # bin width 2/8; 1.0 goes into the last bin
        b = min(7, int((min(max(s, -1), 1) + 1) / 0.25))
        (genuine if g else impostor)[b] += 1
    assert h["genuine"] == genuine and h["impostor"] == impostor and len(h["edges"]) == 9


def test_cmc_from_ranks_matches_loop():
    ranks = np.array([1, 3, 1, 7, 2, 11])
    curve = cmc_from_ranks(ranks, 10)
    assert curve["ranks"] == list(range(1, 11))
    assert curve["rate"] == [sum(r <= k for r in ranks) / len(ranks) for k in range(1, 11)]


class _Refs(HTMLParser):
    """Every attribute of a page that can load something (src, href, ...), and each <img>'s src."""

    LOADING = {"src", "href", "srcset", "data", "poster", "action", "background", "xlink:href"}

    def __init__(self):
        super().__init__()
        self.refs, self.imgs = [], []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in self.LOADING]
        self.imgs += [v for k, v in attrs if tag == "img" and k == "src"]


def _refs(page):
    parser = _Refs()
    parser.feed(page)
    css_urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", page)
    css_urls += re.findall(r"@import\s+['\"]([^'\"]+)", page)
    return parser.refs + css_urls, parser.imgs


def _inline_images(page):
    """[decoded bytes] of the page's <img> data: URIs; fails on a src that is not an inline PNG."""
    _, imgs = _refs(page)
    assert all(src.startswith("data:image/png;base64,") for src in imgs), [s[:40] for s in imgs]
    return [base64.b64decode(src.split(",", 1)[1], validate=True) for src in imgs]


def _pairs_report(out, name="synth<b>&lfw"):
    rng = np.random.default_rng(0)
    n = 200
    same = np.arange(n) % 2 == 0
    a = rng.normal(size=(n, 16))
    b = a * same[:, None] + rng.normal(size=(n, 16))
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    r = verify_pairs(a, b, same)
    r["histogram"] = score_histogram(same, 1 - pair_distances(a, b) / 2)
    results = {name: r}
    checks = check_all(
        PREPROCESS_DEFAULT, {name: describe_array(np.zeros((1, 112, 112, 3), np.uint8))}
    )
    plot_roc(results, out / "roc.png")
    write_pairs_page(out, results, {"checkpoint": "run/<ck>.pt"}, checks)
    return results


def test_page_escapes_text_and_shows_the_table(tmp_path):
    results = _pairs_report(tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert (
        "synth<b>" not in page and "synth&lt;b&gt;&amp;lfw" in page and "run/&lt;ck&gt;.pt" in page
    )
    r = results["synth<b>&lfw"]
    acc = f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}"
    assert f'<td class="num">{acc}</td>' in page
    # the plots are inline, byte for byte the PNGs written beside the page; nothing else is
    # referenced
    assert _inline_images(page) == [(tmp_path / f).read_bytes() for f in ("roc.png", "scores.png")]
    assert all(ref.startswith("data:") for ref in _refs(page)[0])
    evil_src = 'data:image/png;base64,x" onerror="bad()'
    evil = render_html('a"<x>', {"k": "</td><script>bad()</script>"}, {}, [], [("c", evil_src)])
    assert "<script>bad()" not in evil and 'onerror="bad' not in evil and "<x>" not in evil


def test_page_refuses_images_that_are_not_inline():
    for src in ("roc.png", "https://example.org/roc.png", "file:///tmp/roc.png"):
        with pytest.raises(ValueError, match="data:image/ URIs"):
            render_html("t", {}, {}, [], [("roc", src)])


def test_markdown_tables_to_html():
    md = "| a | b |\n| --- | ---: |\n| x | 1.50 |\n\n| c |\n| --- |\n| — |"
    got = markdown_table_html(md)
    assert got.count("<table>") == 2 and '<td class="num">1.50</td>' in got
    assert "<td>—</td>" in got
    assert "---" not in got


@pytest.mark.skipif(
    BROWSER is None,
    reason="no chromium / chromium-browser / google-chrome on PATH "
    "(make setup-browser installs Debian's chromium)",
)
def test_index_html_renders_in_headless_chromium(tmp_path):
    """index.html copied ALONE into an empty folder (no roc.png beside it) shows both plots."""
    out = tmp_path / "report"
    results = _pairs_report(out)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "index.html", alone / "index.html")
    shot = tmp_path / "shot.png"
    cmd = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=3000",
        "--window-size=900,1400",
        f"--screenshot={shot}",
        "--dump-dom",
        (alone / "index.html").as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert sorted(p.name for p in alone.iterdir()) == ["index.html"]
    # set by the page's script once every <img> has naturalWidth > 0
    assert 'data-images="2/2"' in dom
    refs, imgs = _refs(dom)
    assert len(imgs) == 2 and all(ref.startswith("data:") for ref in refs), [r[:40] for r in refs]
    r = results["synth<b>&lfw"]
    for number in (
        f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}",
        f"{100 * r['val']:.2f}",
        "200",
    ):
        assert number in dom
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1400, 900)
    assert (img.min(axis=2) < 200).mean() > 0.02  # text, tables and plots: not a blank page


class _Embed(nn.Module):
    def forward(self, x):  # [B, 3, H, W] -> [B, 16]
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)[:, :16] + 0.01


def _faces(subjects=6, per=4):
    rng = np.random.default_rng(0)
    bases = rng.uniform(0, 255, (subjects, 14, 14, 3)).astype(np.float32)
    images = [
        np.clip(
            cv2.resize(bases[s], (112, 112), interpolation=cv2.INTER_CUBIC)
            + rng.normal(0, 12, (112, 112, 3)),
            0,
            255,
        ).astype(np.uint8)
        for s in range(subjects)
        for _ in range(per)
    ]
    return np.stack(images), np.repeat(np.arange(subjects), per)


def test_ijb_report_files_histogram_cmc_and_checks(tmp_path):
    images, ids = _faces()
    root = write_ijb_fixture(tmp_path / "IJBC", images, ids, templates_per_subject=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 14 * 14, 16))
    with pytest.raises(FacelabError, match="mean: model 0.0, data 0.5 .*--allow-mismatch mean"):
        ijb.evaluate_ijb(model, root, out=tmp_path / "o", preprocess={"mean": 0.0}, workers=0)
    res = ijb.evaluate_ijb(
        model,
        root,
        out=tmp_path / "o",
        preprocess={"mean": 0.0},
        workers=0,
        allow_mismatch=["mean"],
    )
    v = res["verification"]["N0D1F1"]
    assert (
        sum(v["histogram"]["genuine"]) == v["positives"]
        and sum(v["histogram"]["impostor"]) == v["negatives"]
    )
    g = res["identification"]["galleries"]
    meta = ijb.read_ijb_meta(root)
    feats, flips = ijb.extract_features(model, meta, preprocess={"mean": 0.0}, workers=0)
    direct = ijb.identify_ijb(meta, feats, flips, ranks=(1, 2, 3, 4))["galleries"]["G1"]["cmc"]
    assert g["G1"]["cmc_curve"]["rate"][:4] == [direct[str(k)] for k in (1, 2, 3, 4)]
    assert list(g["G1"]["cmc"]) == ["1", "5", "10"] and g["mean"]["cmc_curve"]["ranks"][-1] == 20
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert saved["data_checks"]["sets"]["IJB loose crops"]["mean"]["status"] == "overridden"
    assert "histogram" not in saved["verification"]["N0D1F1"]
    page = (tmp_path / "o" / "index.html").read_text()
    files = [(tmp_path / "o" / f).read_bytes() for f in ("roc.png", "scores.png", "cmc.png")]
    assert all(len(b) > 1000 for b in files) and _inline_images(page) == files
    assert f"{100 * v['tar_at_far']['0.1']:.2f}" in page and "overridden" in page


def test_search_report_and_align_json_check(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    colours = {
        "ann": (250, 10, 10),
        "bob": (10, 250, 10),
        "cyd": (10, 10, 250),
        "dan": (128, 128, 10),
    }
    for folder, names, n in (("gallery", list(colours), 3), ("probes", ["ann", "bob", "dan"], 2)):
        for name in names:
            (tmp_path / folder / name).mkdir(parents=True)
            for i in range(n):
                img = np.clip(
                    np.array(colours[name]) + rng.integers(-60, 60, (8, 8, 3)), 0, 255
                ).astype(np.uint8)
                cv2.imwrite(str(tmp_path / folder / name / f"{i}.png"), img)
    (tmp_path / "gallery" / "align.json").write_text(
        json.dumps({"aligned": 12, "skipped": 0, "size": 8})
    )
    monkeypatch.setattr(
        run, "load_model", lambda path: (_Embed(), dict(PREPROCESS_DEFAULT, size=112))
    )
    args = ("ck.pt", tmp_path / "gallery", tmp_path / "probes", tmp_path / "out", "exact", 4)
    with pytest.raises(FacelabError, match="'gallery'.*size: model 112, data 8 \\(align.json\\)"):
        run.search_folders(*args)
    got = run.search_folders(*args, allow_mismatch=["size"])
    assert got["data_checks"]["sets"]["gallery"]["size"]["status"] == "overridden"
    # no align.json: the first image's height, measured (and let through like the gallery's)
    probes = got["data_checks"]["sets"]["probes"]["size"]
    assert probes["status"] == "overridden" and probes["data"] == 8
    assert probes["source"] == "measured (height of ann/0.png; no align.json)"
    cands = json.loads((tmp_path / "out" / "candidates.json").read_text())
    # every mate is in the top 4
    ranks = [1 + [c[0] for c in p["candidates"]].index(p["identity"]) for p in cands]
    page = (tmp_path / "out" / "index.html").read_text()
    assert _inline_images(page) == [(tmp_path / "out" / "cmc.png").read_bytes()]
    for k in ("1", "4"):
        assert got["cmc"][k] == np.mean(np.array(ranks) <= int(k))
        assert f"{100 * got['cmc'][k]:.2f}" in page
    assert got["cmc_curve"]["rate"] == [np.mean(np.array(ranks) <= k) for k in range(1, 5)]


def test_cmc_axis_is_exactly_0_to_100_percent():
    curves = {
        "perfect": {"ranks": [1, 2, 3], "rate": [1.0, 1.0, 1.0]},
        "low": {"ranks": [1, 2, 3], "rate": [0.1, 0.2, 0.3]},
    }
    for subset in (curves, {"low": curves["low"]}, {"perfect": curves["perfect"]}):
        (ax,) = cmc_figure(subset).axes
        assert ax.get_ylim() == (0.0, 100.0)
        assert [list(line.get_ydata()) for line in ax.get_lines()] == [
            [100 * r for r in c["rate"]] for c in subset.values()
        ]
