"""DDL with the official code's switches against a loop transcription of TFace's DDL (float64).

What TFace's loss (Tencent/TFace, torchkit/loss/ddl.py) computes, per branch b (branch 0 the
teacher), written here as plain loops over pairs and bins on 0-d float64 tensors, so that
autograd gives its exact gradient:
  negatives  cosines of the branch's normalised features; for each row i the largest entry of the
             upper triangle (j > i), the other entries being 0: max(0, max_j>i cos_ij), 0 for the
             last row;
  positives  the cosines of the positive pairs, keeping those > 0 (its threshold 0);
  histogram  nodes t_r = r/1000, r < 1000; h_r = Σ_s exp(-0.5·((s − t_r)/0.1)²), normalised;
  KL         kl_div(log(q + 1e-9), p + 1e-9, batchmean over one row)
             = Σ_r (p_r + 1e-9)(log(p_r + 1e-9) − log(q_r + 1e-9)), the teacher p not detached;
  loss       0.1·Σ_b>0 KL(P+_0 ‖ P+_b) + 0.02·Σ_b>0 KL(P-_0 ‖ P-_b)
             + 0.5·Σ_b Σ_c (mean S-_b − mean S+_c).
TFace feeds its negatives from a branch of one image per identity and its positives from a separate
pair branch; facelab takes both from the same images of a branch (positives: same-identity pairs
i < j), so the transcription's triangle skips same-identity pairs, which hold no negative. With
distinct identities that is TFace's triangle as it stands (test_upper_negatives_...).
"""

import math

import pytest
import torch

from facelab.config import config_from_dict
from facelab.errors import FacelabError
from facelab.losses import build_objectives
from facelab.losses.ddl import DDLLoss, branch_similarities, kl_divergence, soft_histogram

TFACE = {"detach_teacher": False, "negatives": "upper", "positive_min": 0.0, "bin_nodes": "left",
         "kl_form": "smooth"}
TERMS = ("ddl_kl_pos", "ddl_kl_neg", "ddl_order")
F64 = torch.float64


# ---- the transcription: plain loops over pairs and bins ----

def loop_cos(rows):
    """[[cos(a, b) for b] for a] of a list of feature rows (lists of 0-d tensors)."""
    unit = []
    for row in rows:
        norm = torch.sqrt(sum(v * v for v in row))
        unit.append([v / norm for v in row])
    return [[sum(x * y for x, y in zip(a, b, strict=True)) for b in unit] for a in unit]


def tface_negatives(cos, labels):
    """Row i: the largest cosine above the diagonal (j > i) to another identity, floored at 0."""
    out = []
    for i in range(len(cos)):
        best = torch.zeros((), dtype=F64)  # the zeroed lower triangle and diagonal
        for j in range(i + 1, len(cos)):
            if labels[j] != labels[i] and cos[i][j] > best:
                best = cos[i][j]
        out.append(best)
    return out


def tface_positives(cos, labels, threshold=0.0):
    """Same-identity pairs i < j whose cosine is > threshold."""
    pairs = [cos[i][j] for i in range(len(cos)) for j in range(i + 1, len(cos))
             if labels[i] == labels[j]]
    return [c for c in pairs if c > threshold]


def tface_histogram(sims, bins=1000, sigma=0.1):
    h = []
    for r in range(bins):
        t = r / bins
        h.append(sum(torch.exp(-0.5 * ((s - t) / sigma) ** 2) for s in sims))
    total = sum(h)
    return [v / total for v in h]


def tface_kl(anchor, dist, eps=1e-9):
    return sum((a + eps) * (torch.log(a + eps) - torch.log(d + eps))
               for a, d in zip(anchor, dist, strict=True))


def tface_ddl(emb, labels, groups, w=(0.1, 0.02, 0.5)):
    """(kl_pos, kl_neg, order) terms, weighted, of TFace's loss on facelab's branches (batch order
    inside a branch; group -1 unused). emb: [B, d] float64 tensor."""
    rows = [[emb[i, k] for k in range(emb.shape[1])] for i in range(emb.shape[0])]
    neg, pos = [], []
    for g in sorted(set(groups) - {-1}):
        idx = [i for i in range(len(groups)) if groups[i] == g]
        cos = loop_cos([rows[i] for i in idx])
        lab = [labels[i] for i in idx]
        neg.append(tface_negatives(cos, lab))
        pos.append(tface_positives(cos, lab))
    pos_h, neg_h = [tface_histogram(s) for s in pos], [tface_histogram(s) for s in neg]
    kl_pos = sum(tface_kl(pos_h[0], pos_h[b]) for b in range(1, len(pos_h)))
    kl_neg = sum(tface_kl(neg_h[0], neg_h[b]) for b in range(1, len(neg_h)))
    order = sum(sum(n) / len(n) - sum(p) / len(p) for n in neg for p in pos)
    return w[0] * kl_pos, w[1] * kl_neg, w[2] * order


# ---- the batch ----

def batch(seed=0):
    """Teacher (0), two students (1, 2) and unused rows (-1), interleaved in the batch; three
    identities with two images per branch. Student 2's identity-2 pair has cos -0.05: inside the
    histograms' kernel reach, and dropped by positive_min 0."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.tensor([0, 1, 2, 0, 1, 2, -1, 0, 1, 2, 0, 1, 2, -1, 0, 1, 2, 0, 1, 2])
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 3, 1, 1, 1, 1, 1, 1, 3, 2, 2, 2, 2, 2, 2])
    base = torch.randn(3, 6, generator=g, dtype=F64)  # [identities, d]
    emb = base[labels.clamp_max(2)] + 0.6 * torch.randn(20, 6, generator=g, dtype=F64)  # [B, d]
    u = emb[16] / emb[16].norm()  # [d]
    v = torch.randn(6, generator=g, dtype=F64)
    v = (v - (v @ u) * u) / (v - (v @ u) * u).norm()  # [d] unit, orthogonal to u
    emb[19] = 2.0 * (math.sqrt(1 - 0.05**2) * v - 0.05 * u)  # cos(emb[16], emb[19]) = -0.05
    return emb, labels, groups


def grads(terms, x):
    """d(sum of the given terms)/dx for each subset used below: all, KL only, order only."""
    full = torch.autograd.grad(sum(terms), x, retain_graph=True)[0]
    kl = torch.autograd.grad(terms[0] + terms[1], x, retain_graph=True)[0]
    order = torch.autograd.grad(terms[2], x)[0]
    return full, kl, order


@pytest.fixture(scope="module")
def reference():
    """The transcription's terms and gradients on batch() (a few seconds: scalar autograd)."""
    emb, labels, groups = batch()
    x = emb.clone().requires_grad_(True)
    terms = tface_ddl(x, labels.tolist(), groups.tolist())
    values = [t.item() for t in terms]
    return values, *grads(list(terms), x)


def run_ddl(**options):
    emb, labels, groups = batch()
    x = emb.clone().requires_grad_(True)
    out = DDLLoss(**options)(x, labels, ddl_group=groups)
    return out, x


# ---- parity ----

def test_the_batch_exercises_every_switch():
    emb, labels, groups = batch()
    for g in (0, 1, 2):
        pos, neg = branch_similarities(emb[groups == g], labels[groups == g])
        assert pos.numel() == 3 and neg.numel() == 6
        _, upper = branch_similarities(emb[groups == g], labels[groups == g], "upper")
        assert (neg < 0).any() or (upper < neg).any()  # the floor or the triangle bites
    pos2, _ = branch_similarities(emb[groups == 2], labels[groups == 2])
    assert (pos2 <= 0).sum() == 1  # the pair that positive_min 0 drops


def test_tface_switches_match_the_transcription_in_value_and_gradient(reference):
    values, full, kl, _ = reference
    out, x = run_ddl(**TFACE)
    for key, want in zip(TERMS, values, strict=True):
        assert abs(out[key].item() - want) <= 1e-10, key
    got_full, got_kl, _ = grads([out[k] for k in TERMS], x)
    torch.testing.assert_close(got_full, full, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_kl, kl, rtol=0, atol=1e-10)
    _, _, groups = batch()
    assert got_kl[groups == 0].abs().max() > 1e-4  # the KL terms move the teacher's rows
    assert got_full[groups == -1].abs().max() == 0  # unused rows never reach the loss


def test_detached_teacher_gets_the_order_gradient_only(reference):
    values, full, _, order = reference
    out, x = run_ddl(**{**TFACE, "detach_teacher": True})
    for key, want in zip(TERMS, values, strict=True):  # the same forward
        assert abs(out[key].item() - want) <= 1e-10, key
    got_full, got_kl, _ = grads([out[k] for k in TERMS], x)
    _, _, groups = batch()
    teacher = groups == 0
    assert got_kl[teacher].abs().max() == 0  # no path from the KL terms into the teacher's rows
    torch.testing.assert_close(got_full[teacher], order[teacher], rtol=0, atol=1e-10)
    torch.testing.assert_close(got_full[~teacher], full[~teacher], rtol=0, atol=1e-10)
    assert (full[teacher] - order[teacher]).abs().max() > 1e-4  # detaching changes something


def test_upper_negatives_on_distinct_labels_are_tfaces_triangle():
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(7, 5, generator=g, dtype=F64)
    labels = torch.arange(7)  # TFace's negative branch: one image per identity
    _, neg = branch_similarities(emb, labels, "upper")
    cos = loop_cos([[emb[i, k] for k in range(5)] for i in range(7)])
    want = []
    for i in range(7):  # the triangle as TFace takes it: no identity test at all
        row = [cos[i][j].item() if j > i else 0.0 for j in range(7)]
        want.append(max(row))
    assert neg.tolist() == pytest.approx(want, abs=1e-12)
    assert neg[-1].item() == 0.0 and (neg >= 0).all()
    _, every = branch_similarities(emb, labels, "all")
    assert (neg <= every.clamp_min(0) + 1e-12).all()  # a subset of the candidates, floored at 0


# ---- each switch alone, from the defaults ----

def test_upper_negatives_give_the_last_sample_zero():
    emb, labels, groups = batch()
    for g in (0, 1, 2):
        e, lab = emb[groups == g], labels[groups == g]
        _, every = branch_similarities(e, lab)
        _, upper = branch_similarities(e, lab, "upper")
        assert upper.shape == every.shape and upper[-1].item() == 0.0
        assert (upper <= every.clamp_min(0) + 1e-12).all()
    single = branch_similarities(emb[:2], labels[:2], "upper")[1]  # one identity: no negatives
    assert single.numel() == 0
    base, up = DDLLoss()(emb, labels, ddl_group=groups), DDLLoss(negatives="upper")(
        emb, labels, ddl_group=groups)
    assert abs(up["ddl_order"].item() - base["ddl_order"].item()) > 1e-3


def test_positive_min_drops_pairs_at_or_below_it():
    emb, labels, groups = batch()
    e, lab = emb[groups == 2], labels[groups == 2]
    pos, _ = branch_similarities(e, lab)
    kept, _ = branch_similarities(e, lab, positive_min=0.0)
    assert kept.tolist() == pytest.approx([c for c in pos.tolist() if c > 0])
    assert kept.numel() == pos.numel() - 1
    base = DDLLoss()(emb, labels, ddl_group=groups)
    dropped = DDLLoss(positive_min=0.0)(emb, labels, ddl_group=groups)
    # mean S+ of branch 2 rises, so every (negative, positive) pair of the order term falls
    assert dropped["ddl_order"].item() < base["ddl_order"].item() - 1e-3
    assert DDLLoss(positive_min=-1.0)(emb, labels, ddl_group=groups)["ddl_order"].item() == (
        pytest.approx(base["ddl_order"].item(), abs=1e-12))


def test_left_nodes_shift_the_histogram_by_half_a_bin():
    sims = torch.tensor([-0.05, 0.2, 0.41, 0.9], dtype=F64)
    left = soft_histogram(sims, 50, 0.1, "left")
    mid = soft_histogram(sims + 0.5 / 50, 50, 0.1, "mid")  # t_r = r/K = (r + 0.5)/K − 0.5/K
    torch.testing.assert_close(left, mid, rtol=0, atol=1e-14)
    assert soft_histogram(torch.tensor([0.3], dtype=F64), 1000).argmax().item() == 300
    emb, labels, groups = batch()
    a = DDLLoss(bin_nodes="left")(emb, labels, ddl_group=groups)["ddl_kl_pos"].item()
    b = DDLLoss(bin_nodes="mid")(emb, labels, ddl_group=groups)["ddl_kl_pos"].item()
    assert a != pytest.approx(b, rel=1e-6, abs=0)


def test_smooth_kl_weights_every_bin_by_the_teacher_plus_eps():
    p = soft_histogram(torch.tensor([0.2, 0.25, 0.3], dtype=F64))
    q = soft_histogram(torch.tensor([0.5, 0.7], dtype=F64))
    want = sum((a + 1e-9) * (math.log(a + 1e-9) - math.log(b + 1e-9))
               for a, b in zip(p.tolist(), q.tolist(), strict=True))
    smooth, floor = kl_divergence(p, q, "smooth").item(), kl_divergence(p, q, "floor").item()
    assert smooth == pytest.approx(want, rel=1e-12)
    # where q underflows, log(q + 1e-9) caps the log ratio lower than log(q + 1e-10) does
    assert floor * (1 - 1e-3) < smooth < floor
    assert kl_divergence(p, p, "smooth").item() == pytest.approx(0.0, abs=1e-15)


def test_detach_changes_gradients_not_values():
    (on, x_on), (off, x_off) = run_ddl(detach_teacher=True), run_ddl(detach_teacher=False)
    for key in TERMS:
        assert on[key].item() == pytest.approx(off[key].item(), rel=1e-12)
    g_on = torch.autograd.grad(sum(on.values()), x_on)[0]
    g_off = torch.autograd.grad(sum(off.values()), x_off)[0]
    teacher = batch()[2] == 0
    assert (g_on[teacher] - g_off[teacher]).abs().max() > 1e-4
    torch.testing.assert_close(g_on[~teacher], g_off[~teacher], rtol=1e-9, atol=1e-12)


def test_bad_options_are_errors_naming_them():
    for kwargs, name in (({"negatives": "upper_triangle"}, "negatives"),
                         ({"bin_nodes": "centre"}, "bin_nodes"),
                         ({"kl_form": "kl_div"}, "kl_form"),
                         ({"positive_min": 1.0}, "positive_min"),
                         ({"positive_min": float("nan")}, "positive_min")):
        with pytest.raises(FacelabError, match=name):
            DDLLoss(**kwargs)


# ---- config ----

@pytest.mark.parametrize(("key", "value"), [
    ("negatives", "uper"), ("bin_nodes", "center"), ("kl_form", "tface"),
    ("positive_min", 1.5), ("positive_min", "zero"), ("detach_teacher", "no way")])
def test_config_rejects_bad_values_naming_the_field(key, value):
    with pytest.raises(FacelabError, match=rf"distill\.{key}") as err:
        config_from_dict({"distill": {"name": "ddl", key: value}})
    assert "\n" not in str(err.value)


def test_config_builds_the_loss_with_every_switch():
    cfg = config_from_dict({"distill": {"name": "ddl"}})
    d = cfg.distill
    assert (d.detach_teacher, d.negatives, d.positive_min, d.bin_nodes, d.kl_form) == (
        False, "all", None, "left", "floor")
    tface = config_from_dict({"distill": {"name": "ddl", **TFACE, "positive_min": 0}})
    loss = build_objectives(tface, torch.nn.Linear(2, 2))["ddl"]
    assert isinstance(loss, DDLLoss)
    assert (loss.detach_teacher, loss.negatives, loss.positive_min, loss.bin_nodes,
            loss.kl_form) == (False, "upper", 0.0, "left", "smooth")
