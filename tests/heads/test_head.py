"""FaceHead: loss dict equals a manual cross-entropy; regulariser; classifier/margin agreement."""

import math

import pytest
import torch

from facelab.errors import FacelabError
from facelab.heads import Classifier, FaceHead, build_head, build_margin
from facelab.heads.margins.normface import NormFace


def manual_cross_entropy(logits, labels):
    """mean_i (log sum_j exp(l_ij) - l_i,y_i), python loops and math (max-shifted)."""
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        top = max(row)
        total += top + math.log(sum(math.exp(v - top) for v in row)) - row[y]
    return total / len(labels)


def inputs(b=8, d=6, num_classes=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, d, generator=g), torch.randint(0, num_classes, (b,), generator=g)


@pytest.mark.parametrize(("margin", "kwargs"), [("softmax", {}), ("arcface", {"s": 16.0}), ("cosface", {"s": 8.0})])
def test_loss_is_the_cross_entropy_of_the_margin_logits(margin, kwargs):
    torch.manual_seed(0)
    head = build_head(margin, 6, 5, **kwargs)
    x, labels = inputs()
    out = head.forward_with_logits(x, labels)
    losses, logits, columns = out
    assert set(losses) == {"loss", "ce"}
    assert not head.sharded
    assert torch.equal(columns, torch.arange(5))  # every class, in order
    assert torch.equal(head.correct(out, labels), logits.argmax(dim=1) == labels)
    expected_logits = head.margin(head.classifier(x, labels))
    torch.testing.assert_close(logits, expected_logits)
    assert losses["ce"].dtype == torch.float32
    assert losses["ce"].item() == pytest.approx(manual_cross_entropy(logits, labels), rel=1e-5)
    torch.testing.assert_close(losses["loss"], losses["ce"])
    torch.testing.assert_close(head(x, labels)["loss"], losses["loss"])
    losses["loss"].backward()
    assert torch.isfinite(head.classifier.weight.grad).all()


def test_build_head_picks_the_classifier_the_margin_needs():
    softmax = build_head("softmax", 6, 5)
    assert not softmax.classifier.normalize and softmax.classifier.bias is not None
    arc = build_head("arcface", 6, 5, m=0.3)
    assert arc.classifier.normalize and arc.classifier.bias is None and arc.margin.m == 0.3
    with pytest.raises(FacelabError, match="unknown margin"):
        build_head("arc", 6, 5)


def test_margin_and_classifier_must_agree():
    with pytest.raises(FacelabError, match="normalize=True"):
        FaceHead(Classifier(6, 5, normalize=False), build_margin("arcface"))


class NormPenalty(NormFace):
    """NormFace plus a made-up regulariser on the feature norms, to exercise the "reg" key."""

    def regularizer(self, c):
        return 0.1 * c.norms.mean()


def test_regularizer_is_added_to_the_loss():
    torch.manual_seed(0)
    head = FaceHead(Classifier(6, 5), NormPenalty(s=8.0))
    x, labels = inputs()
    losses = head(x, labels)
    assert set(losses) == {"loss", "ce", "reg"}
    torch.testing.assert_close(losses["reg"], 0.1 * x.norm(dim=1).mean())
    torch.testing.assert_close(losses["loss"], losses["ce"] + losses["reg"])


def test_loss_in_float32_under_autocast():
    torch.manual_seed(0)
    head = build_head("arcface", 6, 5, s=16.0)
    x, labels = inputs()
    plain = head(x, labels)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = head(x, labels)["loss"]
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain)


def test_build_head_gives_subcenter_arcface_three_subcentres_unless_told():
    assert build_head("subcenter_arcface", 6, 5).classifier.sub_centers == 3
    assert build_head("subcenter_arcface", 6, 5, sub_centers=2).classifier.sub_centers == 2
    assert build_head("arcface", 6, 5).classifier.sub_centers == 1
