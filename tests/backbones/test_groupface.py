"""GroupFace against a float64 loop transcription of METHODS.md ("Architecture pieces"): self-distributed
labels, the group decision network, the final embedding and the auxiliary loss; gradients; eval mode."""

import math

import pytest
import torch
from torch import nn

from facelab.backbones.groupface import GroupFace, self_distributed_labels
from facelab.config import config_from_dict
from facelab.errors import FacelabError
from facelab.losses.base import Objective
from facelab.losses.groupface import GroupFaceTerm
from facelab.model import build_model
from facelab.train.task import FaceTask

B, D_X, D, K, HIDDEN = 6, 5, 4, 3, 7


def ref_labels(p):
    """p: list of B lists of K probabilities -> argmax_k (p_k - mean_b p_k)/K + 1/K, one label per row."""
    k, n = len(p[0]), len(p)
    mean = [sum(p[i][j] for i in range(n)) / n for j in range(k)]
    labels = []
    for row in p:
        shifted = [(row[j] - mean[j]) / k + 1 / k for j in range(k)]
        labels.append(max(range(k), key=lambda j: shifted[j]))
    return labels


def matvec(w, b, v):
    return [sum(w[o][i] * v[i] for i in range(len(v))) + b[o] for o in range(len(w))]


def ref_fc_bn_prelu(block, rows):
    """Linear -> BatchNorm1d in training mode (batch mean, biased variance) -> PReLU, over a batch of rows."""
    lin, bn, act = block
    w, b = lin.weight.tolist(), lin.bias.tolist()
    h = [matvec(w, b, v) for v in rows]
    out = [[0.0] * len(h[0]) for _ in h]
    for j in range(len(h[0])):
        col = [r[j] for r in h]
        mean = sum(col) / len(col)
        var = sum((c - mean) ** 2 for c in col) / len(col)
        for i, c in enumerate(col):
            y = (c - mean) / math.sqrt(var + bn.eps) * bn.weight[j].item() + bn.bias[j].item()
            out[i][j] = y if y >= 0 else act.weight[j].item() * y
    return out


def reference(model, x):
    """(final embeddings [B][D], group probabilities [B][K], aux loss) of a training-mode forward."""
    rows = x.tolist()
    hidden = ref_fc_bn_prelu(model.decision[1], ref_fc_bn_prelu(model.decision[0], rows))
    gw, gb = model.group_logits.weight.tolist(), model.group_logits.bias.tolist()
    probs = []
    for h in hidden:
        z = matvec(gw, gb, h)
        e = [math.exp(v - max(z)) for v in z]
        probs.append([v / sum(e) for v in e])
    iw, ib = model.instance.weight.tolist(), model.instance.bias.tolist()
    w, b = model.group.weight.tolist(), model.group.bias.tolist()
    finals = []
    for v, p in zip(rows, probs, strict=True):
        final = matvec(iw, ib, v)
        for k in range(K):  # group FC k: rows k·D .. (k+1)·D of the side-by-side Linear
            v_g = matvec(w[k * D : (k + 1) * D], b[k * D : (k + 1) * D], v)
            final = [f + p[k] * g for f, g in zip(final, v_g, strict=True)]
        finals.append(final)
    labels = ref_labels(probs)
    ce = -sum(math.log(p[y]) for p, y in zip(probs, labels, strict=True)) / len(rows)
    return finals, probs, model.lam * ce


def make(lam=0.1, seed=0):
    torch.manual_seed(seed)
    model = GroupFace(nn.Identity(), D_X, D, groups=K, lam=lam, hidden=HIDDEN).double()
    for bn in (model.decision[0][1], model.decision[1][1]):  # non-trivial affine BN and PReLU slopes
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.3, 0.3)
    for block in model.decision:
        nn.init.uniform_(block[2].weight, 0.05, 0.4)
    return model


def test_self_distributed_labels_match_the_loop():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        p = torch.softmax(torch.randn(9, 4, generator=g, dtype=torch.float64) * 2, dim=1)
        assert self_distributed_labels(p).tolist() == ref_labels(p.tolist())
    # the batch mean is removed: a group every sample prefers (column 0 here) does not win every label
    p = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3], [0.8, 0.15, 0.05]], dtype=torch.float64)
    assert p.argmax(1).tolist() == [0, 0, 0] and self_distributed_labels(p).tolist() == [1, 2, 0]


def test_training_forward_matches_the_loop():
    model = make().train()
    x = torch.randn(B, D_X, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = model(x)
    finals, _, aux = reference(model, x)
    assert out.shape == (B, D)
    torch.testing.assert_close(out, torch.tensor(finals, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    terms = model.aux_losses()
    assert set(terms) == {"groupface"}
    assert terms["groupface"].item() == pytest.approx(aux, rel=1e-10)
    assert model.aux_losses() == {}  # handed over once


def test_gradients_flow_to_every_part():
    backbone = nn.Linear(D_X, D_X).double()
    model = GroupFace(backbone, D_X, D, groups=K, lam=0.0, hidden=HIDDEN).double().train()
    x = torch.randn(B, D_X, dtype=torch.float64, requires_grad=True)
    out = model(x)
    aux = model.aux_losses()["groupface"]
    assert aux.item() == 0.0  # lam = 0: the decision network still learns through the embedding
    (out.pow(2).sum() + aux).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    model.zero_grad()
    model.lam = 0.1
    model(x)
    model.aux_losses()["groupface"].backward()  # the group loss alone reaches the decision network
    assert model.group_logits.weight.grad.abs().sum() > 0 and model.instance.weight.grad is None


def test_eval_mode_returns_embeddings_only():
    model = make().eval()
    x = torch.randn(B, D_X, dtype=torch.float64)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (B, D)
    assert model.aux_losses() == {}
    # eval uses the running statistics: a single image embeds the same alone or in a batch
    torch.testing.assert_close(model(x[:1]), out[:1])


@pytest.mark.parametrize("kwargs", [{"groups": 1}, {"groups": 2.0}, {"lam": -1.0}, {"hidden": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(FacelabError, match="groupface"):
        GroupFace(nn.Identity(), D_X, D, **kwargs)


class Constant(Objective):
    """An objective with one constant term `name`."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, embeddings, labels, **extras):
        return {self.name: embeddings.new_zeros(())}


def test_config_wraps_any_backbone_and_adds_the_loss_term():
    cfg = config_from_dict(
        {
            "model": {"backbone": "tiny", "embedding_size": 8, "kwargs": {"width": 4},
                      "groupface": {"groups": 4, "hidden": 8, "lam": 0.5}},
            "head": {"margin": "cosface", "kwargs": {"s": 8.0}},
        }
    )
    assert isinstance(build_model(cfg), GroupFace)
    cfg_off = config_from_dict({"model": {"backbone": "tiny", "embedding_size": 8, "kwargs": {"width": 4}}})
    assert not isinstance(build_model(cfg_off), GroupFace)
    torch.manual_seed(0)
    preprocess = {"template": "arcface112", "size": 112, "colour": "RGB", "mean": 0.5, "std": 0.5}
    task = FaceTask(cfg, num_classes=5, preprocess=preprocess).train()
    images = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    assert list(task.objectives) == ["groupface"] and isinstance(task.objectives["groupface"], GroupFaceTerm)
    losses = task(images, torch.tensor([0, 1, 2, 3])).losses
    assert set(losses) == {"loss", "ce", "groupface"}
    assert losses["loss"].item() == pytest.approx(losses["ce"].item() + losses["groupface"].item(), rel=1e-6)
    assert 0 < losses["groupface"].item() < math.inf  # λ·CE
    # a term of that name already in the loss dict: the groupface objective refuses to overwrite it
    task.objectives = nn.ModuleDict({"first": Constant("groupface"), **task.objectives})
    with pytest.raises(FacelabError, match="loss term 'groupface' of objective 'groupface' clashes"):
        task(images, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(FacelabError, match="model.groupface.groups"):
        config_from_dict({"model": {"groupface": {"groups": 1}}})
