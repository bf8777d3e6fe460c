"""Feature-norm quality and error-versus-reject curves: loop transcription of the documented
convention, synthetic data where low quality means noisier embeddings (the curve must fall), plot
file."""

import math

import numpy as np
import pytest
import torch

from facelab.errors import FacelabError
from facelab.eval.protocols.quality import error_versus_reject, feature_norm_quality
from facelab.eval.reports.plots import plot_error_versus_reject


def synthetic_pairs(n_pairs=3000, d=64, seed=0, shuffle_quality=False):
    """Genuine and impostor pairs; image = a * normalize(identity + noise(a)), noise falls in a."""
    rng = np.random.default_rng(seed)

    def image(identity):
        a = rng.uniform(10, 100)
        noise = 2.5 * (100 - a) / 90 + 0.1  # low norm (quality) -> much noisier
        x = identity + noise * rng.standard_normal(d) / math.sqrt(d)
        return a * x / np.linalg.norm(x)

    emb1, emb2, same = [], [], []
    for i in range(n_pairs):
        ids = rng.standard_normal((2, d)) / math.sqrt(d)
        genuine = i % 2 == 0
        emb1.append(image(ids[0]))
        emb2.append(image(ids[0] if genuine else ids[1]))
        same.append(genuine)
    emb1, emb2 = np.array(emb1), np.array(emb2)
    q1, q2 = feature_norm_quality(emb1), feature_norm_quality(emb2)
    if shuffle_quality:
        q1, q2 = rng.permutation(q1), rng.permutation(q2)
    return emb1, emb2, np.array(same), q1, q2


def loop_error_versus_reject(emb1, emb2, same, q1, q2, fractions, fmr):
    """The module docstring's convention, with python loops and math."""
    scores = []
    for a, b in zip(emb1.tolist(), emb2.tolist(), strict=True):
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        scores.append(dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))
    impostors = sorted((s for s, g in zip(scores, same, strict=True) if not g), reverse=True)
    threshold = impostors[int(math.floor(fmr * len(impostors)))]
    quality = [min(a, b) for a, b in zip(q1.tolist(), q2.tolist(), strict=True)]
    order = sorted(range(len(scores)), key=lambda i: (quality[i], i))
    fnmr = []
    for f in fractions:
        kept = order[int(math.floor(f * len(scores) + 1e-9)) :]
        genuine = [scores[i] for i in kept if same[i]]
        fnmr.append(sum(s <= threshold for s in genuine) / len(genuine) if genuine else math.nan)
    return threshold, fnmr


def test_feature_norm_quality_is_the_norm():
    x = np.random.default_rng(0).standard_normal((5, 7)) * 3
    expected = [math.sqrt(sum(v * v for v in row)) for row in x.tolist()]
    np.testing.assert_allclose(feature_norm_quality(x), expected, rtol=1e-12)
    np.testing.assert_allclose(
        feature_norm_quality(torch.tensor(x, requires_grad=True)), expected, rtol=1e-12
    )


@pytest.mark.parametrize("fmr", [0.05, 0.2])
def test_error_versus_reject_matches_loops(fmr):
    emb1, emb2, same, q1, q2 = synthetic_pairs(n_pairs=301, d=8, seed=1)
    q1 = np.round(q1 / 10)  # ties in quality: broken by pair index
    fractions = (0.0, 0.25, 0.5, 0.8)
    result = error_versus_reject(emb1, emb2, same, q1, q2, fractions=fractions, fmr=fmr)
    threshold, fnmr = loop_error_versus_reject(emb1, emb2, same, q1, q2, fractions, fmr)
    assert result["threshold"] == pytest.approx(threshold, abs=1e-12)
    np.testing.assert_allclose(result["fnmr"], fnmr, rtol=0, atol=1e-12)
    assert result["fractions"] == list(fractions) and result["pairs"] == 301
    kept = [g + i for g, i in zip(result["genuine_kept"], result["impostor_kept"], strict=True)]
    assert kept == [301 - int(math.floor(f * 301 + 1e-9)) for f in fractions]


def test_threshold_gives_fmr_at_most_the_target_on_all_pairs():
    emb1, emb2, same, q1, q2 = synthetic_pairs()
    result = error_versus_reject(emb1, emb2, same, q1, q2)
    assert result["fractions"] == pytest.approx([i / 10 for i in range(10)])
    assert 0 < result["fmr"][0] <= 1e-3  # 1500 impostors: at most one scores above the threshold
    assert result["fmr_target"] == 1e-3


def test_curve_falls_when_low_quality_means_noisier_embeddings():
    result = error_versus_reject(*synthetic_pairs())
    fnmr = np.array(result["fnmr"])
    assert fnmr[0] > 0.2
    assert (np.diff(fnmr) < 0).all()  # strictly decreasing at every rejected fraction
    assert fnmr[-1] < 0.1 * fnmr[0]
    # the same pairs with quality scores shuffled: rejecting by them does not help
    random = np.array(error_versus_reject(*synthetic_pairs(shuffle_quality=True))["fnmr"])
    assert random[0] == pytest.approx(fnmr[0])
    assert abs(random[-1] - random[0]) < 0.25 * random[0]


def test_plot_is_written_atomically(tmp_path):
    result = error_versus_reject(*synthetic_pairs(n_pairs=400, d=16))
    path = tmp_path / "plots" / "erc.png"
    plot_error_versus_reject(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_error_versus_reject(result, tmp_path / "erc.svg", label="MagFace norm")
    assert b"<svg" in (tmp_path / "erc.svg").read_bytes()[:500]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["erc.png", "erc.svg"]


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"emb2": np.zeros((10, 3))}, "same shape"),
        ({"same": np.zeros(10, dtype=bool)}, "genuine and impostor"),
        ({"same": np.full(10, 2)}, "boolean"),
        ({"quality1": np.zeros(9)}, "quality1"),
        ({"quality2": np.full(10, np.nan)}, "NaN"),
        ({"fractions": (0.0, 1.0)}, "fractions"),
        ({"fmr": 0.0}, "fmr"),
        ({"emb1": np.full((10, 4), np.inf)}, "emb1"),
    ],
)
def test_bad_input(change, what):
    rng = np.random.default_rng(0)
    args = {
        "emb1": rng.standard_normal((10, 4)),
        "emb2": rng.standard_normal((10, 4)),
        "same": np.arange(10) % 2 == 0,
        "quality1": rng.random(10),
        "quality2": rng.random(10),
    }
    args.update(change)
    with pytest.raises(FacelabError, match=what):
        error_versus_reject(**args)
