"""Class-sharded head on 2 gloo processes equals the single-process head, for every margin (float64):
loss, margin state, and the gradients of a backbone (averaged over ranks as DDP does), of the centres,
biases and per-class margins (each rank's slice of the single-process gradient); the same with Partial FC
against one process over the union of the ranks' sampled columns; and the sharded per-sample correctness."""

import json

import pytest
import torch
from torch import nn

from facelab.distributed.ops import gather_rows
from facelab.distributed.spawn import spawn
from facelab.heads import build_head
from facelab.heads.cross_entropy import correct as logits_correct
from facelab.heads.margins import MARGINS

pytestmark = pytest.mark.distributed
B, P, D, C = 8, 5, 6, 7  # global batch, backbone input, embedding size, classes (shards of 4 and 3)


def batch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, P, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 6, 3, 4, 4, 1, 5, 0])  # targets on both shards, rows of both ranks
    return x, labels


def backbone():
    torch.manual_seed(1)
    lin = nn.Linear(P, D).double()
    with torch.no_grad():
        lin.weight.mul_(20.0)  # feature norms in MagFace's [l_a, u_a] = [10, 110], so g(a) has a gradient
    return lin


def heads(margin, rank, size, classes=C, **classifier_kwargs):
    torch.manual_seed(2)
    full = build_head(margin, D, classes, classifier_kwargs=classifier_kwargs).double()
    shard_kwargs = {**classifier_kwargs, "rank": rank, "world_size": size}
    shard = build_head(margin, D, classes, classifier_kwargs=shard_kwargs).double()
    clf, k = shard.classifier, shard.classifier.sub_centers
    rows = {"weight": slice(clf.start * k, clf.end * k), "bias": slice(clf.start, clf.end),
            "class_margins": slice(clf.start, clf.end)}
    with torch.no_grad():
        for name, sl in rows.items():
            if getattr(clf, name) is not None:
                getattr(clf, name).copy_(getattr(full.classifier, name)[sl])
    return full, shard, rows


def forward(head, embeddings, labels):
    """(HeadOutput, labels of its rows): a sharded head gets the batch gathered from every rank, as FaceTask
    hands it."""
    if head.sharded:
        embeddings, labels = gather_rows(embeddings), gather_rows(labels)  # [N·b, d], [N·b]
    return head.forward_with_logits(embeddings, labels), labels


def run(head, net, x, labels, steps=2):
    """Two forward/backward passes (stateful margins update in between); returns the last losses."""
    for step in range(steps):
        head.zero_grad(), net.zero_grad()
        torch.manual_seed(10 + step)  # ElasticFace draws its margins from the global RNG
        losses = forward(head, net(x), labels)[0].losses
        losses["loss"].backward()
    return {k: v.item() for k, v in losses.items()}


def run_sampled(full, shard, net_full, net, x, labels, mine, steps=2):
    """Partial FC: each step the sharded head draws its columns, and the one-process head is made to use the
    union of every rank's draw (its own draw replaced); returns (one-process losses, sharded losses, number
    of columns in the last union) of the last step."""
    for step in range(steps):
        for module in (full, shard, net_full, net):
            module.zero_grad()
        torch.manual_seed(10 + step)
        out = forward(shard, net(x[mine]), labels[mine])[0]
        got = out.losses
        got["loss"].backward()
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, out.columns.tolist())
        union = torch.tensor(sum(parts, []))  # sorted class ids: rank ranges are in class order
        full.classifier.sampled_classes = lambda local, union=union: union  # one process: local = global ids
        torch.manual_seed(10 + step)
        ref = full(net_full(x), labels)
        ref["loss"].backward()
    return {k: v.item() for k, v in ref.items()}, {k: v.item() for k, v in got.items()}, len(union)


def differences(ref, got, full, shard, net_full, net, rows):
    """Max |difference| of the losses, of the backbone gradients (each rank's averaged over ranks, as DDP
    does), of this rank's rows of the classifier gradients, and of the margin's state."""
    size = torch.distributed.get_world_size()
    err = {"loss": max(abs(ref[k] - got[k]) for k in ref), "keys": sorted(ref) == sorted(got)}
    for p in net.parameters():  # DDP: the mean over ranks
        torch.distributed.all_reduce(p.grad)
        p.grad /= size
    pairs = zip(net.parameters(), net_full.parameters(), strict=True)
    err["backbone"] = max((a.grad - b.grad).abs().max().item() for a, b in pairs)
    for name, sl in rows.items():
        p = getattr(shard.classifier, name)
        if p is not None:
            err[name] = (p.grad - getattr(full.classifier, name).grad[sl]).abs().max().item()
    buffers = zip(shard.margin.state_dict().values(), full.margin.state_dict().values(), strict=True)
    state = [(a - b).abs().max().item() for a, b in buffers]
    err["margin_state"] = max(state, default=0.0)
    return err


def compare(rank, size, out):
    errors = {}
    x, labels = batch()
    mine = slice(rank * B // size, (rank + 1) * B // size)
    for margin in sorted(MARGINS):  # one process group for all: spawning is the slow part
        full, shard, rows = heads(margin, rank, size)
        net_full, net = backbone(), backbone()
        ref = run(full, net_full, x, labels)
        got = run(shard, net, x[mine], labels[mine])
        errors[margin] = differences(ref, got, full, shard, net_full, net, rows)
        full, shard, rows = heads(margin, rank, size, classes=40, sample_rate=0.3, seed=0)
        net_full, net = backbone(), backbone()
        ref, got, columns = run_sampled(full, shard, net_full, net, x, 5 * labels, mine)  # targets on both shards
        errors[f"{margin} partial_fc"] = {**differences(ref, got, full, shard, net_full, net, rows),
                                          "sampled": columns < 40}
    errors["partial_fc"] = partial_fc_error(rank, size)
    errors["correct"] = correct_counts(rank, size)
    gathered = [None] * size
    torch.distributed.all_gather_object(gathered, errors)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)


def partial_fc_error(rank, size):
    """Sharded Partial FC (sample_rate 0.25 of 40 classes): |loss - one-process cross-entropy over the union
    of every rank's sampled columns|, and whether every label is among them."""
    torch.manual_seed(2)
    full = build_head("arcface", D, 40, s=16.0).double()
    kw = {"rank": rank, "world_size": size, "sample_rate": 0.25, "seed": 0}
    shard = build_head("arcface", D, 40, s=16.0, classifier_kwargs=kw).double()
    clf = shard.classifier
    shard.classifier.weight.data.copy_(full.classifier.weight[clf.start : clf.end])
    g = torch.Generator().manual_seed(4)
    x, labels = torch.randn(B, D, generator=g, dtype=torch.float64), torch.randint(0, 40, (B,), generator=g)
    mine = slice(rank * B // size, (rank + 1) * B // size)
    out, y = forward(shard, x[mine], labels[mine])  # y: the gathered labels [B]
    losses = out.losses
    correct = shard.correct(out, y)  # [B]
    same = torch.equal(correct, logits_correct(out.logits, y, out.columns, size))
    parts = [None] * size
    torch.distributed.all_gather_object(parts, out.columns.tolist())
    union = torch.tensor(sum(parts, []))  # sorted: rank ranges are in class order
    ref = full.margin(full.classifier(x, labels))[:, union]  # [B, U]
    ce = torch.nn.functional.cross_entropy(ref, torch.searchsorted(union, labels)).item()
    return {"loss": abs(losses["loss"].item() - ce), "columns": abs(len(union) - 10),
            "labels_kept": float(not set(labels.tolist()) <= set(union.tolist())),
            "correct": float(not torch.equal(correct, union[ref.argmax(dim=1)] == labels)),
            "gathered": float(not (torch.equal(y, labels) and same))}


def correct_counts(rank, size):
    """FaceHead.correct (the best logit over every rank's columns is the label's) against the argmax of the
    one-process logits; three samples are made right by construction (their centre is their embedding)."""
    torch.manual_seed(2)
    x, labels = batch()
    emb = backbone()(x).detach()  # [B, D]
    full = build_head("cosface", D, C, m=0.0).double()
    shard = build_head("cosface", D, C, m=0.0, classifier_kwargs={"rank": rank, "world_size": size}).double()
    clf = shard.classifier
    with torch.no_grad():
        for i in (0, 3, 6):
            full.classifier.weight[labels[i]] = emb[i]
        clf.weight.copy_(full.classifier.weight[clf.start : clf.end])
    assert not full.sharded and shard.sharded
    ref = full.forward_with_logits(emb, labels).logits.argmax(dim=1) == labels  # [B]
    mine = slice(rank * B // size, (rank + 1) * B // size)
    out, y = forward(shard, emb[mine], labels[mine])  # logits [B, C_local] of the gathered batch
    assert out.logits.shape == (B, clf.num_local) and out.columns.tolist() == list(range(clf.start, clf.end))
    got = shard.correct(out, y)
    assert torch.equal(got, logits_correct(out.logits, y, out.columns, size))
    return {"mismatches": int((got != ref).sum()), "right": int(ref.sum())}


@pytest.fixture(scope="module")
def errors(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "errors.json"
    spawn(compare, 2, str(out))
    return json.loads(out.read_text())


@pytest.mark.parametrize("margin", sorted(MARGINS))
def test_sharded_head_equals_single_process(errors, margin):
    for rank, per_margin in enumerate(errors):
        assert_equal(per_margin[margin], f"rank {rank} {margin}")


def assert_equal(err, where):
    assert err.pop("keys"), f"{where}: the loss dicts differ in keys"
    assert "backbone" in err and "weight" in err
    for what, value in err.items():
        assert value < 1e-9, f"{where}: {what} differs by {value:.3g}"


@pytest.mark.parametrize("margin", sorted(MARGINS))
def test_sharded_partial_fc_equals_one_process_over_the_same_columns(errors, margin):
    """Sampling and sharding commute: 2 ranks at sample_rate 0.3 (40 classes, sub-centres and per-class margins
    included) equal one process whose softmax runs over the union of the ranks' sampled columns."""
    for rank, per_margin in enumerate(errors):
        err = per_margin[f"{margin} partial_fc"]
        assert err.pop("sampled"), f"rank {rank}: every column was kept, nothing sampled"
        assert_equal(err, f"rank {rank} {margin} partial_fc")


def test_sharded_partial_fc_is_the_softmax_over_the_sampled_columns(errors):
    for per_margin in errors:
        assert per_margin["partial_fc"] == {"loss": pytest.approx(0.0, abs=1e-9), "labels_kept": 0.0, "columns": 0,
                                            "correct": 0.0, "gathered": 0.0}


def test_sharded_correct_is_the_one_process_argmax(errors):
    for per_rank in errors:
        assert per_rank["correct"]["mismatches"] == 0
        assert 3 <= per_rank["correct"]["right"] < B  # both outcomes occur
