"""DAIL dataset-aware softmax and crossing dropout: the head's loss against a per-sample loop over columns."""

import copy
import math

import pytest
import torch

from facelab.errors import FacelabError
from facelab.heads import Classifier, build_head
from facelab.heads.dataset_mask import DatasetMask, cell_hash
from facelab.heads.margins import MARGINS as REGISTRY

OFFSETS = [0, 3, 7, 10]  # datasets of 3, 4 and 3 classes


def dataset_by_loop(c):
    return next(d for d in range(len(OFFSETS) - 1) if OFFSETS[d] <= c < OFFSETS[d + 1])


def loop_loss(logits, labels, allowed):
    """mean_i -log softmax over exactly the columns allowed[i] (a list), per sample in torch."""
    terms = []
    for i, y in enumerate(labels.tolist()):
        cols = torch.tensor(allowed[i])
        terms.append(torch.logsumexp(logits[i, cols], dim=0) - logits[i, y])
    return torch.stack(terms).mean()


def setup(margin, kwargs, p=0.0, seed=0, classifier_kwargs=None):
    torch.manual_seed(seed)
    head = build_head(margin, 6, 10, classifier_kwargs=classifier_kwargs,
                      dataset_mask=DatasetMask(OFFSETS, p, seed=3), **kwargs)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 10, (12,), generator=g)
    return head, x, labels


MARGINS = [("softmax", {}), ("arcface", {"s": 16.0, "m": 0.5}), ("cosface", {"s": 8.0}),
           ("combined", {"s": 16.0}), ("subcenter_arcface", {"s": 16.0})]


@pytest.mark.parametrize(("margin", "kwargs"), MARGINS)
def test_softmax_runs_over_own_dataset_only(margin, kwargs):
    head, x, labels = setup(margin, kwargs)
    loss = head(x, labels)["ce"]
    gx, gw = torch.autograd.grad(loss, [x, head.classifier.weight])
    raw = head.margin(head.classifier(x, labels)).float()  # the margin's logits, no mask
    allowed = [[j for j in range(10) if dataset_by_loop(j) == dataset_by_loop(y)] for y in labels.tolist()]
    expected = loop_loss(raw, labels, allowed)
    ex, ew = torch.autograd.grad(expected, [x, head.classifier.weight])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(gx, ex, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, ew, rtol=1e-4, atol=1e-5)
    plain = torch.nn.functional.cross_entropy(raw, labels)
    assert plain.item() > loss.item()  # the other datasets' classes no longer push the sample away


@pytest.mark.parametrize(("margin", "kwargs"), MARGINS[:3])
def test_crossing_dropout_adds_the_drawn_columns(margin, kwargs):
    head, x, labels = setup(margin, kwargs, p=0.3)
    head.set_step(5)
    assert head.dataset_mask.step == 5
    loss = head(x, labels)["ce"]
    gx, = torch.autograd.grad(loss, [x])
    keep = head.dataset_mask.keep(labels, torch.arange(10))  # the same draw (seed, step): deterministic
    raw = head.margin(head.classifier(x, labels)).float()
    allowed = [[j for j in range(10) if keep[i, j]] for i in range(12)]
    for i, y in enumerate(labels.tolist()):  # own dataset always in; some other-dataset columns too
        assert all(keep[i, j] for j in range(10) if dataset_by_loop(j) == dataset_by_loop(y))
    expected = loop_loss(raw, labels, allowed)
    ex, = torch.autograd.grad(expected, [x])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(gx, ex, rtol=1e-4, atol=1e-5)


def registry_setup(margin, p):
    """A float64 head of `margin` (registry defaults) with the dataset mask, embeddings of norm ~20-70 (inside
    MagFace's [l_a, u_a] = [10, 110], so its margin and regulariser see the norm) and labels; training mode."""
    head, x, labels = setup(margin, {}, p=p)
    head.double()
    head.set_step(5)
    return head, (20.0 * x.detach()).double().requires_grad_(), labels


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("margin", sorted(REGISTRY))
def test_every_registered_margin_softmax_runs_over_the_kept_columns(margin, p):
    """Every margin of the registry, float64, training mode: the head's loss and its gradients (embeddings, class
    centres and the classifier's other parameters) equal the margin's own logits, then -log(e^{z_y} / Σ_{j kept}
    e^{z_j}) per sample over the kept columns only (own dataset, plus the crossing-dropout draws for p > 0),
    averaged, plus the margin's regulariser. Stateful margins (AdaCos dynamic, CurricularFace, AdaFace) update
    their buffers in training mode: the reference runs on a copy taken before the head's forward, so both sides
    update from the same state with the same batch; margins with random draws (ElasticFace) get the same seed."""
    head, x, labels = registry_setup(margin, p)
    ref = copy.deepcopy(head)  # same weights, same buffers, before either side updates them
    ref.dataset_mask = None
    params = [q for q in head.classifier.parameters()]  # weight (centres), bias (softmax), class_margins (AdaM)
    torch.manual_seed(11)
    out = head(x, labels)
    grads = torch.autograd.grad(out["loss"], [x, *params])

    own = [[j for j in range(10) if dataset_by_loop(j) == dataset_by_loop(y)] for y in labels.tolist()]
    if p == 0.0:
        kept = own
    else:  # the crossing-dropout draw (seed, step, first column): the one the head took
        keep = DatasetMask(OFFSETS, p, seed=3)
        keep.set_step(5)
        draw = keep.keep(labels, torch.arange(10))
        kept = [[j for j in range(10) if draw[i, j]] for i in range(12)]
        assert all(set(o) <= set(k) for o, k in zip(own, kept, strict=True))
        extra = sum(len(k) - len(o) for o, k in zip(own, kept, strict=True))
        assert 0 < extra < sum(10 - len(o) for o in own)  # some other-dataset columns drawn, not all
    kept_mask = torch.tensor([[j in kept[i] for j in range(10)] for i in range(12)])  # [12, 10]
    torch.manual_seed(11)
    # the margin's logits [12, 10], no mask; it is told the kept columns (AdaCos's scale reads them)
    c = ref.classifier(x, labels)._replace(keep=kept_mask)
    z = ref.margin(c)
    assert z.dtype == torch.float64
    ce = torch.stack([
        -torch.log(torch.exp(z[i, y]) / torch.exp(z[i, kept[i]]).sum()) for i, y in enumerate(labels.tolist())
    ]).mean()
    reg = ref.margin.regularizer(c)
    expected = ce if reg is None else ce + reg
    ref_params = [q for q in ref.classifier.parameters()]
    expected_grads = torch.autograd.grad(expected, [x, *ref_params])

    assert ("reg" in out) == (reg is not None)
    assert out["ce"].item() == pytest.approx(ce.item(), rel=1e-10)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-10)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10 * (1.0 + want.abs().max().item()))
    assert grads[1].abs().max() > 0  # the class centres get a gradient at all
    for (name, b), (_, b_ref) in zip(head.margin.named_buffers(), ref.margin.named_buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, rtol=0, atol=0, msg=f"buffer {name}")  # both saw the same state
    if p == 0.0:  # the other datasets' columns pushed the sample away before the mask
        assert torch.nn.functional.cross_entropy(z, c.labels).item() > ce.item() + 1e-6


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_adacos_dynamic_scale_counts_only_the_kept_classes(p):
    """DAIL + AdaCos: the dynamic scale's B_avg = mean_i Σ_{k ≠ y_i, k kept for i} e^{s·cos θ_ik}
    (the sample's own softmax), by a loop over samples and columns; counting every class instead
    gives a larger scale."""
    head, x, labels = registry_setup("adacos", p)
    s0 = float(head.margin.scale)
    mask = head.dataset_mask
    keep = mask.keep(labels, torch.arange(10))  # [12, 10], the same draw the head takes
    with torch.no_grad():
        cos = head.classifier(x, labels).cos  # [12, 10]
    total, theta = 0.0, []
    for i, y in enumerate(labels.tolist()):
        theta.append(math.acos(float(cos[i, y])))
        total += sum(math.exp(s0 * float(cos[i, k])) for k in range(10) if k != y and keep[i, k])
    med = sorted(theta)[(len(theta) - 1) // 2]  # torch.median: the lower middle value
    expected = math.log(total / 12) / math.cos(min(math.pi / 4, med))
    everything = sum(math.exp(s0 * float(cos[i, k])) for i, y in enumerate(labels.tolist())
                     for k in range(10) if k != y)
    unmasked = math.log(everything / 12) / math.cos(min(math.pi / 4, med))
    head(x, labels)
    assert float(head.margin.scale) == pytest.approx(expected, rel=1e-9)
    assert unmasked > expected + 1e-3


def test_dropout_draw_rate_seed_and_step():
    mask = DatasetMask(OFFSETS, 0.2, seed=1)
    labels = torch.zeros(4000, dtype=torch.int64)  # dataset 0: columns 3..9 are other-dataset
    keep = mask.keep(labels, torch.arange(10))
    rate = keep[:, 3:].float().mean().item()
    assert abs(rate - 0.2) < 4 * math.sqrt(0.2 * 0.8 / keep[:, 3:].numel())
    assert torch.equal(keep, mask.keep(labels, torch.arange(10)))  # same seed and step: same draw
    mask.step = 1
    assert not torch.equal(keep, mask.keep(labels, torch.arange(10)))
    assert DatasetMask(OFFSETS, 1.0).keep(labels, torch.arange(10)).all()  # p = 1: the plain softmax


def test_dropout_draw_of_a_column_subset_is_the_whole_draw_restricted():
    """A shard or a sampled subset of columns draws, for each (row, class id), what one process holding every
    class draws: sharded and Partial FC runs see the one-process crossing dropout."""
    mask = DatasetMask(OFFSETS, 0.4, seed=3)
    mask.step = 7
    labels = torch.tensor([0, 4, 8, 1, 5, 9])
    whole = mask.keep(labels, torch.arange(10))  # [6, 10]
    for cols in (torch.arange(5, 10), torch.tensor([1, 3, 4, 8]), torch.arange(0, 3)):
        assert torch.equal(mask.keep(labels, cols), whole[:, cols])
    h = cell_hash((3, 7), torch.arange(500), torch.arange(0, 2**31 - 1, 104_729))  # [500, 20506] up to big ids
    assert h.min() >= 0 and h.max() < 2**31  # so p = 1 (threshold 2^31) keeps every column, p = 0 none


def test_dropout_draws_are_independent_across_rows_columns_and_steps():
    mask = DatasetMask([0, 1, 3000], 0.3, seed=0)  # dataset 0 is class 0 alone: columns 1.. are all crossing
    labels = torch.zeros(1000, dtype=torch.int64)
    draws = []
    for step in range(2):
        mask.step = step
        draws.append(mask.keep(labels, torch.arange(1, 3000)).double())  # [1000, 2999] 0/1
    a, b = draws
    n = a.numel()
    assert abs(a.mean().item() - 0.3) < 4 * math.sqrt(0.21 / n)
    for x, y in ((a[:, :-1], a[:, 1:]), (a[:-1], a[1:]), (a, b)):  # neighbouring columns, rows; next step
        x, y = x.flatten() - 0.3, y.flatten() - 0.3
        assert abs((x * y).mean().item() / 0.21) < 4 / math.sqrt(x.numel())


def test_mask_uses_global_ids_of_a_shard_and_of_mined_columns():
    shard = Classifier(6, 10, rank=1, world_size=2)  # holds classes [5, 10)
    sharded = build_head("arcface", 6, 10, classifier_kwargs={"rank": 1, "world_size": 2})
    assert sharded.sharded and sharded.classifier.start == 5
    x0, y0 = torch.randn(4, 6), torch.tensor([0, 4, 8, 9])  # no process group: the collectives are identities
    assert shard(x0, y0).columns is None  # every class of the rank, in order
    cols = sharded.forward_with_logits(x0, y0).columns
    assert cols.tolist() == [5, 6, 7, 8, 9]
    assert torch.equal(cols, torch.arange(shard.start, shard.end))
    keep = DatasetMask(OFFSETS).keep(torch.tensor([0, 4, 8]), cols)
    expected = [[dataset_by_loop(c) == dataset_by_loop(y) for c in cols.tolist()] for y in (0, 4, 8)]
    assert keep.tolist() == expected
    head, x, labels = setup("arcface", {"s": 16.0}, classifier_kwargs={"hard_prototypes": 2})
    out = head.forward_with_logits(x, labels)
    loss = out.losses["ce"]
    columns = out.columns.tolist()
    assert len(columns) < 10  # mining selected a subset of the classes
    c = head.classifier(x, labels)  # same mining (same weights and labels)
    assert c.columns.tolist() == columns
    raw = head.margin(c).float()
    local = {c: k for k, c in enumerate(columns)}
    allowed = [[local[c] for c in columns if dataset_by_loop(c) == dataset_by_loop(y)] for y in labels.tolist()]
    expected = loop_loss(raw, torch.tensor([local[y] for y in labels.tolist()]), allowed)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_offsets_are_refused():
    with pytest.raises(FacelabError, match="offsets"):
        DatasetMask([0, 3, 3])
    with pytest.raises(FacelabError, match="crossing_dropout"):
        DatasetMask(OFFSETS, 1.5)
