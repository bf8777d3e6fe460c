"""AdaptiveFace's Hard Prototype Mining in the classifier, against a loop transcription: the k nearest
prototypes of each batch class by centre cosine (max over sub-centre pairs), the selected columns, the
remapped labels and margins, and the loss over the selected classes only."""

import math

import pytest
import torch
import torch.nn.functional as F

from facelab.errors import FacelabError
from facelab.heads import Classifier, Cosines, build_head
from facelab.heads.prototypes import hard_prototypes

C, D = 12, 6


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def ref_selected(weight, labels, k, sub):
    """Sorted class ids: the batch's classes plus, for each, the k other classes with the largest
    max_{a,b} cos(W_{u,a}, W_{c,b})."""
    rows = weight.tolist()
    centres = [[rows[c * sub + a] for a in range(sub)] for c in range(len(rows) // sub)]
    chosen = set(labels)
    for u in set(labels):
        others = [c for c in range(len(centres)) if c != u]
        sims = {c: max(cosine(a, b) for a in centres[u] for b in centres[c]) for c in others}
        chosen |= set(sorted(sims, key=sims.get, reverse=True)[:k])
    return sorted(chosen)


def classifier(k, sub=1, seed=0, margins=None):
    torch.manual_seed(seed)
    clf = Classifier(D, C, sub_centers=sub, hard_prototypes=k, class_margins=margins)
    clf = clf.double()
    with torch.no_grad():
        clf.weight.normal_()
    return clf


@pytest.mark.parametrize("sub", [1, 3])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_selected_columns_and_cosines_match_the_loop(k, sub):
    clf = classifier(k, sub, margins=(0.3, 0.4)).train()
    g = torch.Generator().manual_seed(k + sub)
    x = torch.randn(5, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([3, 7, 3, 0, 11])
    c = clf(x, labels)
    cols = ref_selected(clf.weight, labels.tolist(), k, sub)
    assert c.columns.tolist() == cols and c.cos.shape == (5, len(cols))
    full = clf.eval()(x, labels)  # eval mode: every class, no mining
    assert full.columns is None and full.cos.shape == (5, C)
    torch.testing.assert_close(c.cos, full.cos[:, cols], rtol=0, atol=1e-14)
    assert [cols[j] for j in c.labels.tolist()] == labels.tolist()  # labels remapped to the selected columns
    torch.testing.assert_close(c.target_cos, full.target_cos, rtol=0, atol=1e-14)
    torch.testing.assert_close(c.class_margins, clf.class_margins[cols], rtol=0, atol=0)


def test_neighbours_function_excludes_the_class_itself():
    torch.manual_seed(1)
    centres = torch.randn(7, 2, 4, dtype=torch.float64)
    classes = torch.tensor([0, 5])
    near = hard_prototypes(centres, classes, 3)
    pairs = list(zip(classes.tolist(), near.tolist(), strict=True))
    assert near.shape == (2, 3) and all(u not in row for u, row in pairs)
    for u, row in zip(classes.tolist(), near.tolist(), strict=True):
        ref = ref_selected(centres.reshape(14, 4), [u], 3, 2)
        assert sorted(row + [u]) == ref
    assert hard_prototypes(centres, classes, 100).shape == (2, 6)  # at most C - 1 neighbours


@pytest.mark.parametrize("margin", ["adam_softmax", "arcface", "subcenter_arcface"])
def test_loss_runs_over_the_mined_classes(margin):
    """Head loss with mining == cross-entropy of the margin over the selected columns of the full cosines
    (transcribed from the full classifier output), and gradients reach only the selected centres."""
    torch.manual_seed(3)
    head = build_head(margin, D, C, classifier_kwargs={"hard_prototypes": 2}).double().train()
    x = torch.randn(6, D, dtype=torch.float64)
    labels = torch.tensor([1, 1, 4, 9, 2, 4])
    plain = build_head(margin, D, C).double().train()  # no mining, the same weights
    plain.load_state_dict(head.state_dict())
    out = head.forward_with_logits(x, labels)
    loss = out.losses["ce"]
    cols = ref_selected(head.classifier.weight, labels.tolist(), 2, head.classifier.sub_centers)
    assert out.columns.tolist() == cols and out.logits.shape == (6, len(cols))
    full = plain.classifier(x, labels)
    assert full.columns is None and full.cos.shape == (6, C)
    remapped = torch.tensor([cols.index(y) for y in labels.tolist()])
    margins = None if full.class_margins is None else full.class_margins[cols]
    sub = Cosines(full.cos[:, cols], remapped, full.target_cos, full.norms, margins)
    expected = F.cross_entropy(head.margin(sub), remapped)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the head takes the CE in float32
    head.zero_grad()
    head(x, labels)["loss"].backward()
    grad = head.classifier.weight.grad.view(C, -1).abs().sum(1)  # [C]
    assert set(torch.nonzero(grad).flatten().tolist()) == set(cols)


def test_mining_every_class_is_the_plain_head():
    torch.manual_seed(4)
    head = build_head("cosface", D, C).double().train()
    x, labels = torch.randn(5, D, dtype=torch.float64), torch.tensor([0, 3, 3, 8, 11])
    plain = head(x, labels)["loss"]
    every = build_head("cosface", D, C, classifier_kwargs={"hard_prototypes": C - 1}).double().train()
    every.load_state_dict(head.state_dict())  # the same weights, mining every class
    out = every.forward_with_logits(x, labels)
    mined = out.losses["loss"]
    assert out.columns.tolist() == list(range(C))
    assert every.classifier(x, labels).columns.tolist() == list(range(C))  # selected, not None
    assert mined.item() == pytest.approx(plain.item(), rel=1e-14)


def test_bad_settings():
    with pytest.raises(FacelabError, match="hard_prototypes"):
        Classifier(D, C, hard_prototypes=-1)
    with pytest.raises(FacelabError, match="hard_prototypes"):
        Classifier(D, C, hard_prototypes=1.5)
    with pytest.raises(FacelabError, match="normalize=True"):
        Classifier(D, C, normalize=False, hard_prototypes=2)
    with pytest.raises(FacelabError, match="world size 1"):  # refused when built, not at the first step
        Classifier(D, C, world_size=2, hard_prototypes=2)
