"""Sub-center ArcFace data cleaning: `dominant_subcenter_filter` keeps the images near their class's
most popular sub-centre, against a loop transcription; bad inputs refused."""

import math

import pytest
import torch

from facelab.errors import FacelabError


def loop_dominant_filter(weight, embeddings, labels, k, max_angle_deg):
    """Per class: nearest sub-centre of each image, the most popular one, the angle to it (loops,
    math)."""
    w, x, y = weight.tolist(), embeddings.tolist(), labels.tolist()

    def cosine(a, b):
        dot = sum(p * q for p, q in zip(a, b, strict=True))
        return dot / math.sqrt(sum(p * p for p in a) * sum(q * q for q in b))

    counts = {}
    for xi, c in zip(x, y, strict=True):
        sims = [cosine(xi, w[c * k + j]) for j in range(k)]
        nearest = sims.index(max(sims))
        counts.setdefault(c, [0] * k)[nearest] += 1
    dominant = {c: n.index(max(n)) for c, n in counts.items()}
    angles = [
        math.degrees(math.acos(min(1.0, max(-1.0, cosine(xi, w[c * k + dominant[c]])))))
        for xi, c in zip(x, y, strict=True)
    ]
    return [a <= max_angle_deg for a in angles], dominant


def noisy_class_data(num_classes=4, k=3, d=8, seed=0):
    """Each class: 8 images near its dominant sub-centre (c % k), 3 near another one, 3 random
    (noise)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes * k, d, generator=g, dtype=torch.float64)
    emb, labels = [], []
    for c in range(num_classes):
        dom, other = c % k, (c + 1) % k
        for centre, n, noise in ((dom, 8, 0.4), (other, 3, 0.4)):
            offsets = noise * torch.randn(n, d, generator=g, dtype=torch.float64)
            emb.append(weight[c * k + centre] + offsets)
        emb.append(3 * torch.randn(3, d, generator=g, dtype=torch.float64))
        labels += [c] * 14
    return weight, torch.cat(emb), torch.tensor(labels)


@pytest.mark.parametrize("max_angle_deg", [75.0, 40.0])
def test_dominant_subcenter_filter_matches_loops(max_angle_deg):
    from facelab.heads.margins.subcenter_arcface import dominant_subcenter_filter

    weight, emb, labels = noisy_class_data()
    keep = dominant_subcenter_filter(weight.float(), emb.float(), labels, 3, max_angle_deg)
    expected, dominant = loop_dominant_filter(weight, emb, labels, 3, max_angle_deg)
    assert dominant == {c: c % 3 for c in range(4)}
    assert keep.dtype == torch.bool and keep.tolist() == expected
    assert 0 < int(keep.sum()) < len(keep)
    assert dominant_subcenter_filter(weight, emb, labels, 3, 180.0).all()


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((torch.randn(10, 8), torch.randn(5, 8), torch.zeros(5, dtype=torch.int64), 3), "K=3"),
        ((torch.randn(9, 8), torch.randn(5, 7), torch.zeros(5, dtype=torch.int64), 3),
         "embeddings"),
        ((torch.randn(9, 8), torch.randn(5, 8), torch.full((5,), 3), 3), "labels"),
        ((torch.randn(9, 8), torch.randn(5, 8), torch.zeros(5, dtype=torch.int64), 0), "K=0"),
    ],
)
def test_dominant_subcenter_filter_bad_input(args, what):
    from facelab.heads.margins.subcenter_arcface import dominant_subcenter_filter

    with pytest.raises(FacelabError, match=what):
        dominant_subcenter_filter(*args)
