"""DDL loss against a direct loop transcription of Huang et al. 2020 Eq. 2-6 (float64, values and gradients)."""

import math

import pytest
import torch

from facelab.errors import FacelabError
from facelab.losses.ddl import DDLLoss, branch_similarities, kl_divergence, soft_histogram

BINS = 40  # the transcription is slow in pure Python; the module default (1000) is checked separately


def loop_hist(sims, bins, sigma, nodes="left"):
    """Nodes t_k = k / bins ("left") or (k + 0.5) / bins ("mid")."""
    offset = 0.5 if nodes == "mid" else 0.0
    h = [sum(math.exp(-((s - (k + offset) / bins) ** 2) / (2 * sigma**2)) for s in sims)
         for k in range(bins)]
    total = sum(h)
    return [v / total for v in h]


def loop_kl(p, q):
    return sum(a * (math.log(a + 1e-10) - math.log(b + 1e-10)) for a, b in zip(p, q, strict=True))


def loop_branch(x, labels):
    """Positive cosines i < j with the same label; per sample the largest cosine to another label."""
    n = len(labels)
    cos = [[sum(a * b for a, b in zip(x[i], x[j], strict=True)) for j in range(n)] for i in range(n)]
    pos = [cos[i][j] for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    neg = [max(cos[i][j] for j in range(n) if labels[j] != labels[i]) for i in range(n)
           if any(labels[j] != labels[i] for j in range(n))]
    return pos, neg


def loop_ddl(emb, labels, groups, w=(0.1, 0.02, 0.5), bins=None, sigma=0.1, nodes="left"):
    bins = bins or BINS
    norm = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in emb]
    branches = {}
    for g in sorted(set(groups) - {-1}):
        idx = [i for i in range(len(groups)) if groups[i] == g]
        branches[g] = loop_branch([norm[i] for i in idx], [labels[i] for i in idx])
    kl_pos = kl_neg = 0.0
    for g in [g for g in branches if g > 0]:
        hist = [[loop_hist(branches[b][k], bins, sigma, nodes) for k in (0, 1)] for b in (0, g)]
        kl_pos += loop_kl(hist[0][0], hist[1][0])
        kl_neg += loop_kl(hist[0][1], hist[1][1])
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    order = sum(mean(bi[1]) - mean(bj[0]) for bi in branches.values() for bj in branches.values())
    return w[0] * kl_pos, w[1] * kl_neg, w[2] * order


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2, 3, 3])  # [B]
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, -1, -1])  # teacher, student, ignored
    emb = torch.randn(14, 4, generator=g, dtype=torch.float64)
    emb[6:12] = emb[:6] + 0.7 * torch.randn(6, 4, generator=g, dtype=torch.float64)  # hard = noisier views
    return emb, labels, groups


def numeric_grad(f, emb, h=1e-6):
    """Central differences of the scalar f(list of rows) at emb [n, d]."""
    num = torch.zeros_like(emb)
    for i in range(emb.shape[0]):
        for j in range(emb.shape[1]):
            e1, e2 = emb.clone(), emb.clone()
            e1[i, j] += h
            e2[i, j] -= h
            num[i, j] = (f(e1.tolist()) - f(e2.tolist())) / (2 * h)
    return num


@pytest.mark.parametrize("nodes", ["left", "mid"])
def test_values_and_gradients_match_the_loop_transcription(nodes):
    emb, labels, groups = batch()
    lab, grp = labels.tolist(), groups.tolist()
    want = loop_ddl(emb.tolist(), lab, grp, nodes=nodes)
    full = numeric_grad(lambda e: sum(loop_ddl(e, lab, grp, nodes=nodes)), emb)
    order_only = numeric_grad(lambda e: loop_ddl(e, lab, grp, nodes=nodes)[2], emb)
    teacher = groups == 0
    for detach in (False, True):
        x = emb.clone().requires_grad_(True)
        ddl = DDLLoss(bins=BINS, detach_teacher=detach, bin_nodes=nodes)
        terms = ddl(x, labels, ddl_group=groups)
        for key, value in zip(("ddl_kl_pos", "ddl_kl_neg", "ddl_order"), want, strict=True):
            assert terms[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12)
        (grad,) = torch.autograd.grad(sum(terms.values()), x)
        # detached teacher: its rows get the order term's gradient only; the students' rows never enter
        # the teacher's histograms, so their gradient is the full one either way
        expect = torch.where(teacher[:, None], order_only, full) if detach else full
        torch.testing.assert_close(grad, expect, rtol=1e-5, atol=1e-7)
        assert grad[12].abs().max() == 0  # group -1 never reaches the loss
    assert not torch.allclose(full[teacher], order_only[teacher])  # the option does change something


def test_identical_teacher_and_student_give_zero_kl():
    emb, labels, groups = batch()
    emb[6:12] = emb[:6]  # students are exact copies of the teachers
    terms = DDLLoss(bins=200)(emb, labels, ddl_group=groups)
    assert terms["ddl_kl_pos"].item() == pytest.approx(0.0, abs=1e-12)
    assert terms["ddl_kl_neg"].item() == pytest.approx(0.0, abs=1e-12)
    p = soft_histogram(torch.tensor([0.3, 0.7], dtype=torch.float64))
    assert p.sum().item() == pytest.approx(1.0) and kl_divergence(p, p).item() == 0.0
    assert p.shape == (1000,) and p.argmax().item() in (299, 300, 699, 700)
    sims = [-0.2, 0.15, 0.5, 0.52, 0.99]
    for nodes in ("left", "mid"):
        got = soft_histogram(torch.tensor(sims, dtype=torch.float64), nodes=nodes).tolist()
        assert got == pytest.approx(loop_hist(sims, 1000, 0.1, nodes))


def test_degenerate_batches_and_weights():
    emb, labels, groups = batch()
    only_teacher = torch.where(groups == 0, groups, torch.full_like(groups, -1))
    terms = DDLLoss()(emb, labels, ddl_group=only_teacher)
    assert terms["ddl_kl_pos"].item() == 0.0 and terms["ddl_kl_neg"].item() == 0.0
    pos, neg = branch_similarities(emb[:6], labels[:6])
    want_pos, want_neg = loop_branch(torch.nn.functional.normalize(emb[:6], dim=1).tolist(), labels[:6].tolist())
    assert pos.tolist() == pytest.approx(want_pos) and neg.tolist() == pytest.approx(want_neg)
    assert terms["ddl_order"].item() == pytest.approx(0.5 * (neg.mean() - pos.mean()).item())
    off = DDLLoss(kl_pos=0.0, kl_neg=0.0, order=0.0)(emb, labels, ddl_group=groups)
    assert all(v.item() == 0.0 for v in off.values())
    half = DDLLoss()(emb.to(torch.bfloat16), labels, ddl_group=groups)  # autocast hands bf16 embeddings
    assert half["ddl_kl_pos"].dtype == torch.float32 and torch.isfinite(half["ddl_kl_pos"])
    with pytest.raises(FacelabError, match="ddl_group"):
        DDLLoss()(emb, labels)
