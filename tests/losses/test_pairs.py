"""The wrapped PML losses against loop transcriptions of METHODS.md "Pair-based metric learning"."""

import itertools

import pytest
import torch
from torch import nn

from facelab.config import PairsConfig
from facelab.errors import FacelabError
from facelab.losses.pairs import build_pair_objective, siamese_pairs


class Recorder(nn.Module):
    """Wraps a miner and keeps the tuples it returned, so the brute force uses the same selection."""

    def __init__(self, miner: nn.Module) -> None:
        super().__init__()
        self.miner, self.tuples = miner, None

    def forward(self, *args):
        self.tuples = self.miner(*args)
        return self.tuples


def _batch(seed=0, ids=4, k=4, d=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ids * k, d, generator=g, dtype=torch.float64)
    return x, torch.arange(ids).repeat_interleave(k)


def _dist(x, i, j):
    """Euclidean distance of L2-normalised rows i, j, one scalar at a time."""
    a, b = x[i] / x[i].norm(), x[j] / x[j].norm()
    return ((a - b) ** 2).sum().sqrt()


def _avg_nonzero(terms):
    nz = [t for t in terms if t.item() > 0]
    return sum(nz) / len(nz) if nz else torch.zeros((), dtype=torch.float64)


def _same_value_and_grad(objective, brute, x, labels, params=()):
    x1 = x.clone().requires_grad_(True)
    got = objective(x1, labels)["pairs"]
    got.backward()
    x2 = x.clone().requires_grad_(True)
    want = brute(x2)
    grads = torch.autograd.grad(want, [x2, *params]) if want.requires_grad else [torch.zeros_like(x2)]
    assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(x1.grad, grads[0], rtol=1e-6, atol=1e-9)
    return grads[1:]


def test_contrastive_all_pairs_matches_loop():
    x, labels = _batch()
    obj = build_pair_objective(PairsConfig(loss="contrastive", kwargs={"pos_margin": 0.3, "neg_margin": 1.2},
                                           weight=0.5))

    def brute(x):
        pos, neg = [], []
        for i, j in itertools.combinations(range(len(labels)), 2):
            d = _dist(x, i, j)
            (pos if labels[i] == labels[j] else neg).append(
                torch.relu(d - 0.3) if labels[i] == labels[j] else torch.relu(1.2 - d))
        return 0.5 * (_avg_nonzero(pos) + _avg_nonzero(neg))

    _same_value_and_grad(obj, brute, x, labels)


def test_semihard_selection_and_triplet_loss_match_brute_force():
    x, labels = _batch(seed=1)
    alpha = 0.2
    obj = build_pair_objective(PairsConfig(loss="triplet", miner="semihard", kwargs={"margin": alpha}))
    obj.miner = Recorder(obj.miner)
    with torch.no_grad():
        chosen = set()
        for a, p, n in itertools.product(range(len(labels)), repeat=3):
            if a != p and labels[a] == labels[p] and labels[n] != labels[a]:
                gap = _dist(x, a, n) - _dist(x, a, p)
                if 0 < gap <= alpha:
                    chosen.add((a, p, n))
    assert chosen, "the test batch should hold semi-hard triplets"

    def brute(x):
        return _avg_nonzero([torch.relu(_dist(x, a, p) - _dist(x, a, n) + alpha) for a, p, n in sorted(chosen)])

    _same_value_and_grad(obj, brute, x, labels)
    mined = set(zip(*[t.tolist() for t in obj.miner.tuples], strict=True))
    assert mined == chosen


def _margin_brute(x, triplets, beta, alpha):
    """Wu et al.: relu(α + y(d - β)) for the positive (y=+1) and negative (y=-1) pair of each triplet;
    PML divides the sum by the number of non-zero terms."""
    terms = []
    for a, p, n in triplets:
        terms += [torch.relu(alpha + (_dist(x, a, p) - beta)), torch.relu(alpha - (_dist(x, a, n) - beta))]
    count = sum(1 for t in terms if t.item() > 0)
    return sum(terms) / count


def test_margin_loss_with_distance_weighted_miner_matches_loop_and_learns_beta():
    x, labels = _batch(seed=2)
    obj = build_pair_objective(PairsConfig(loss="margin", miner="distance_weighted",
                                           kwargs={"margin": 0.2, "beta": 1.2}))
    obj.miner = Recorder(obj.miner)
    beta = obj.loss.beta
    assert isinstance(beta, nn.Parameter) and [n for n, _ in obj.named_parameters()] == ["loss.beta"]
    torch.manual_seed(0)
    x1 = x.clone().requires_grad_(True)
    got = obj(x1, labels)["pairs"]
    got.backward()
    triplets = list(zip(*[t.tolist() for t in obj.miner.tuples], strict=True))
    assert triplets and all(labels[a] == labels[p] != labels[n] for a, p, n in triplets)
    x2 = x.clone().requires_grad_(True)
    b2 = beta.detach().clone().double().requires_grad_(True)
    want = _margin_brute(x2, triplets, b2, 0.2)
    gx, gb = torch.autograd.grad(want, [x2, b2])
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(x1.grad, gx, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(beta.grad.double(), gb, rtol=1e-5, atol=1e-7)


def test_margin_loss_with_uniform_histogram_pairs_matches_loop():
    """The histogram miner returns pairs; PML's MarginLoss joins each mined positive pair with each mined
    negative pair of the same anchor into a triplet, then applies the formula."""
    x, labels = _batch(seed=3)
    obj = build_pair_objective(PairsConfig(loss="margin", miner="uniform_histogram",
                                           miner_kwargs={"num_bins": 5, "pos_per_bin": 3, "neg_per_bin": 3}))
    obj.miner = Recorder(obj.miner)
    torch.manual_seed(0)
    x1 = x.clone().requires_grad_(True)
    obj(x1, labels)["pairs"].backward()
    a1, p, a2, n = (t.tolist() for t in obj.miner.tuples)
    assert all(labels[i] == labels[j] for i, j in zip(a1, p, strict=True))
    assert all(labels[i] != labels[j] for i, j in zip(a2, n, strict=True))
    triplets = [(a, pp, nn_) for a, pp in zip(a1, p, strict=True) for b, nn_ in zip(a2, n, strict=True) if a == b]
    assert triplets
    x2 = x.clone().requires_grad_(True)
    want = _margin_brute(x2, triplets, obj.loss.beta.detach().double(), 0.2)
    torch.testing.assert_close(x1.grad, torch.autograd.grad(want, x2)[0], rtol=1e-6, atol=1e-9)


def test_siamese_mode_uses_only_the_interleaved_pairs():
    x, _ = _batch(seed=4, ids=4, k=4)
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 3, 1, 1, 1, 2, 3, 0, 0, 3, 2])
    assert [t.tolist() for t in siamese_pairs(labels)] == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14],
                                                          [3, 7, 11, 15]]
    obj = build_pair_objective(PairsConfig(loss="contrastive", kwargs={"neg_margin": 1.5}), siamese=True)

    def brute(x):
        pos, neg = [], []
        for i in range(0, len(labels), 2):
            d = _dist(x, i, i + 1)
            if labels[i] == labels[i + 1]:
                pos.append(torch.relu(d))
            else:
                neg.append(torch.relu(1.5 - d))
        return _avg_nonzero(pos) + _avg_nonzero(neg)

    _same_value_and_grad(obj, brute, x, labels)


@pytest.mark.parametrize(("cfg", "siamese", "key"), [
    (PairsConfig(loss="arc"), False, "pairs.loss"),
    (PairsConfig(miner="hard"), False, "pairs.miner"),
    (PairsConfig(distance="cos"), False, "pairs.distance"),
    (PairsConfig(kwargs={"margn": 1}), False, "pairs.kwargs"),
    (PairsConfig(loss="triplet"), True, "pairs"),
    (PairsConfig(loss="margin", miner="distance_weighted", distance="l2_raw"), False, "pairs.miner"),
])
def test_bad_pair_config_names_the_key(cfg, siamese, key):
    with pytest.raises(FacelabError, match=f"config {key}"):
        build_pair_objective(cfg, siamese=siamese)


def test_weight_must_be_finite_and_non_negative():
    with pytest.raises(FacelabError, match="pairs.weight"):
        PairsConfig(weight=-1.0)
