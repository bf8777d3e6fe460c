"""Classifier: cosines against a loop computation, sub-centre max, raw logits, sharded layout at
world size 1, per-class margins (AdaM-Softmax) and their validation."""

import math

import pytest
import torch

from facelab.errors import FacelabError
from facelab.heads import Classifier, FaceHead, build_head, build_margin
from facelab.heads.shards import class_range, local_labels, target_cos


def loop_cos(x, w):
    """cos between every row of x and every row of w, python loops and math."""
    out = []
    for xi in x.tolist():
        row = []
        for wj in w.tolist():
            dot = sum(a * b for a, b in zip(xi, wj, strict=True))
            row.append(dot / (math.sqrt(sum(a * a for a in xi)) * math.sqrt(sum(b * b for b in wj))))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def inputs(b=6, d=5, num_classes=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype) * 3
    labels = torch.randint(0, num_classes, (b,), generator=g)
    return x, labels


def test_cos_target_and_norms_match_loops():
    torch.manual_seed(0)
    clf = Classifier(5, 7).double()
    x, labels = inputs()
    x.requires_grad_(True)
    c = clf(x, labels)
    expected = loop_cos(x.detach(), clf.weight.detach())
    torch.testing.assert_close(c.cos, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c.labels, labels)
    torch.testing.assert_close(c.target_cos, torch.stack([expected[i, y] for i, y in enumerate(labels.tolist())]))
    norms = torch.tensor([math.sqrt(sum(v * v for v in row)) for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(c.norms, norms)
    assert c.norms.requires_grad  # not detached (MagFace / AdaFace need it)
    (c.cos.sum() + c.target_cos.sum() + c.norms.sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(clf.weight.grad).all()


def test_float32_and_half_inputs_compute_in_float32():
    torch.manual_seed(0)
    clf = Classifier(5, 7)
    x, labels = inputs(dtype=torch.float32)
    c = clf(x, labels)
    assert c.cos.dtype == torch.float32
    torch.testing.assert_close(c.cos.double(), loop_cos(x, clf.weight.detach()), rtol=0, atol=1e-6)
    assert clf(x.bfloat16(), labels).cos.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = clf(x, labels)
    assert auto.cos.dtype == torch.float32 and auto.norms.dtype == torch.float32
    torch.testing.assert_close(auto.cos, c.cos, rtol=0, atol=1e-6)


def test_sub_centres_take_the_max_over_each_class():
    torch.manual_seed(0)
    k, num_classes = 3, 4
    clf = Classifier(5, num_classes, sub_centers=k).double()
    assert clf.weight.shape == (num_classes * k, 5)
    x, labels = inputs(num_classes=num_classes)
    c = clf(x, labels)
    full = loop_cos(x, clf.weight.detach())  # [B, C*K], row c*K + k is sub-centre k of class c
    expected = [[max(full[i, j * k + s].item() for s in range(k)) for j in range(num_classes)] for i in range(len(x))]
    torch.testing.assert_close(c.cos, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert c.cos.shape == (len(x), num_classes)


def test_raw_logits_with_bias_when_not_normalized():
    torch.manual_seed(0)
    clf = Classifier(5, 7, normalize=False, bias=True).double()
    with torch.no_grad():
        clf.bias.copy_(torch.arange(7, dtype=torch.float64))
    x, labels = inputs()
    c = clf(x, labels)
    w, b = clf.weight.detach().tolist(), clf.bias.detach().tolist()
    expected = [[sum(p * q for p, q in zip(xi, w[j], strict=True)) + b[j] for j in range(7)] for xi in x.tolist()]
    torch.testing.assert_close(c.cos, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_weight_initialisation():
    torch.manual_seed(0)
    w = Classifier(64, 100, sub_centers=2).weight.detach()
    assert w.shape == (200, 64)
    assert abs(w.mean().item()) < 1e-3 and 0.0095 < w.std().item() < 0.0105


def test_class_ranges_partition_the_classes():
    for num_classes in (1, 7, 10, 64):
        for world_size in range(1, min(num_classes, 5) + 1):
            ranges = [class_range(num_classes, r, world_size) for r in range(world_size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            sizes = [e - s for s, e in ranges]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert class_range(10, 1, 3) == (4, 7)


def test_shards_reassemble_the_world_size_one_result():
    """The sharded layout computed without communication: concatenated cos and summed target_cos
    contributions of 3 ranks equal the single-process classifier's."""
    torch.manual_seed(0)
    full = Classifier(5, 10).double()
    x, labels = inputs(b=8, num_classes=10)
    ref = full(x, labels)
    cos_parts, contributions = [], []
    for rank in range(3):
        shard = Classifier(5, 10, rank=rank, world_size=3).double()
        assert shard.weight.shape == (shard.end - shard.start, 5)
        with torch.no_grad():
            shard.weight.copy_(full.weight[shard.start : shard.end])
        local = local_labels(labels, shard.start, shard.end)
        inside = (labels >= shard.start) & (labels < shard.end)
        torch.testing.assert_close(local[inside], labels[inside] - shard.start)
        assert (local[~inside] == -1).all()
        cos = shard.cosines(x)
        cos_parts.append(cos)
        contributions.append(target_cos(cos, local))
    torch.testing.assert_close(torch.cat(cos_parts, dim=1), ref.cos)
    torch.testing.assert_close(sum(contributions), ref.target_cos)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"embedding_size": 0, "num_classes": 5}, "embedding_size"),
        ({"embedding_size": 4, "num_classes": 5, "sub_centers": 0}, "sub_centers"),
        ({"embedding_size": 4, "num_classes": 5, "bias": True}, "bias"),
        ({"embedding_size": 4, "num_classes": 5, "normalize": False, "sub_centers": 2}, "sub_centers"),
        ({"embedding_size": 4, "num_classes": 5, "rank": 2, "world_size": 2}, "rank"),
        ({"embedding_size": 4, "num_classes": 2, "world_size": 3}, "num_classes"),
    ],
)
def test_bad_configuration(kwargs, field):
    with pytest.raises(FacelabError, match=field):
        Classifier(**kwargs)


@pytest.mark.parametrize(
    ("x", "labels", "what"),
    [
        (torch.randn(3, 4), torch.tensor([0, 1, 2]), "embeddings"),
        (torch.randn(3, 5), torch.tensor([0, 1, 2], dtype=torch.int32), "labels"),
        (torch.randn(3, 5), torch.tensor([0, 1]), "labels"),
        (torch.randn(3, 5), torch.tensor([0, 1, 7]), r"\[0, 7\)"),
        (torch.randn(3, 5), torch.tensor([0, -1, 2]), r"\[0, 7\)"),
    ],
)
def test_bad_inputs(x, labels, what):
    with pytest.raises(FacelabError, match=what):
        Classifier(5, 7)(x, labels)


def test_adam_margins_live_in_the_classifier_without_weight_decay():
    from facelab.train.optim import param_groups

    torch.manual_seed(0)
    head = build_head("adam_softmax", 6, 5)
    m = head.classifier.class_margins
    assert m.shape == (5,) and ((m >= 0.3) & (m <= 0.4)).all()
    decay, no_decay = param_groups(head, 5e-4)
    assert any(p is m for p in no_decay["params"]) and not any(p is m for p in decay["params"])
    x, labels = torch.randn(8, 6), torch.randint(0, 5, (8,))
    losses = head(x, labels)
    assert set(losses) == {"loss", "ce", "reg"}
    assert losses["reg"].item() == pytest.approx(70.0 * (1 - m.clamp(0, 1).mean().item()), rel=1e-6)
    losses["loss"].backward()
    assert torch.isfinite(m.grad).all() and (m.grad != 0).any()
    assert "classifier.class_margins" in head.state_dict()
    c = head.classifier(x, labels)
    assert c.class_margins.dtype == torch.float32 and torch.equal(c.class_margins, m.detach())
    assert Classifier(6, 5)(x, labels).class_margins is None  # the default: no per-class margins
    with pytest.raises(FacelabError, match="per-class margins"):
        FaceHead(Classifier(6, 5), build_margin("adam_softmax"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"class_margins": (0.5, 0.2)},
        {"class_margins": (-0.1, 0.2)},
        {"class_margins": 0.3},
        {"class_margins": (0.3, 0.4), "normalize": False},
    ],
)
def test_classifier_rejects_bad_class_margins(kwargs):
    with pytest.raises(FacelabError, match="class_margins"):
        Classifier(6, 5, **kwargs)
