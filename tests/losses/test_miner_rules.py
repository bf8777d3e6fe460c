"""The miners as facelab builds them (build_pair_objective with PairsConfig defaults) select what METHODS.md
"Pair-based metric learning" says they select, checked against rules computed here in float64, not by PML:

- semihard: the returned triplets are exactly the set {(a, p, n): 0 < d_an - d_ap <= α} of a plain loop over all
  triplets of the batch, each once, and α is the loss margin (facelab's triplet default 0.2, or kwargs.margin)
  unless miner_kwargs.margin sets it apart;
- distance_weighted (PML defaults cutoff=0.5, nonzero_loss_cutoff=1.4; n = embedding dimension): the weight matrix
  the miner hands to its sampler equals `w ∝ max(d, 0.5)^(2-n)·(1 - max(d, 0.5)²/4)^((3-n)/2)` for d < 1.4, else 0
  (rtol 1e-4), and over many draws the frequency with which anchor i draws negative j matches it within 5 binomial
  standard errors; negatives at d >= 1.4 and same-identity images are never drawn; an anchor whose negatives all
  lie at d >= 1.4 yields no triplet; every other anchor yields K triplets per call with its positive uniform over
  the K-1 others;
- uniform_histogram (PML defaults num_bins=100, pos_per_bin=neg_per_bin=10): the positive and the negative pair
  distances are each cut into num_bins equal-width bins over [min, max] (last bin closed); every draw holds exactly
  pos_per_bin (neg_per_bin) pairs from each non-empty bin and none from empty ones, and within a bin the pairs are
  drawn uniformly (with replacement) over many draws.
"""

import itertools
import math

import pytest
import torch

from facelab.config import PairsConfig
from facelab.losses.pairs import build_pair_objective

IDS, K = 6, 4


def _labels() -> torch.Tensor:
    return torch.arange(IDS).repeat_interleave(K)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _dist64(x: torch.Tensor) -> list[list[float]]:
    """Euclidean distances of the L2-normalised rows, float64, one pair at a time (facelab's `l2`)."""
    u = [[float(v) for v in row] for row in _unit(x.double())]
    return [[math.sqrt(sum((a - b) ** 2 for a, b in zip(ui, uj, strict=True))) for uj in u] for ui in u]


def _check_facelab_distance(miner, x: torch.Tensor, dist: list[list[float]]) -> None:
    """The miner measures with facelab's `l2` (normalised Euclidean) distance: the same matrix as ours."""
    torch.testing.assert_close(miner.distance(x).double(), torch.tensor(dist, dtype=torch.float64),
                               rtol=0, atol=1e-5)


# ---------------------------------------------------------------- semihard


def _semihard_truth(labels: list[int], dist: list[list[float]], alpha: float) -> set[tuple[int, int, int]]:
    """All (a, p, n) with 0 < d_an - d_ap <= α; none lies within 1e-5 of either bound (float32 cannot flip it)."""
    keep = set()
    for a, p, n in itertools.product(range(len(labels)), repeat=3):
        if a == p or labels[a] != labels[p] or labels[a] == labels[n]:
            continue
        m = dist[a][n] - dist[a][p]
        assert abs(m) > 1e-5 and abs(m - alpha) > 1e-5, "test batch has a triplet on a rule boundary"
        if 0 < m <= alpha:
            keep.add((a, p, n))
    return keep


@pytest.mark.parametrize(("loss", "kwargs", "miner_kwargs", "alpha"), [
    ("triplet", {}, {}, 0.2),  # facelab's triplet default α (FaceNet)
    ("triplet", {"margin": 0.35}, {}, 0.35),  # the miner follows the loss margin
    ("triplet", {"margin": 0.35}, {"margin": 0.1}, 0.1),  # unless miner_kwargs set it apart
    ("margin", {"margin": 0.3}, {}, 0.3),  # MarginLoss's α too
    ("contrastive", {}, {}, 0.2),  # a loss without `margin`: 0.2
])
def test_semihard_returns_exactly_the_semihard_triplets(loss, kwargs, miner_kwargs, alpha):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(IDS * K, 8, generator=g)  # float32, as in training
    x = _unit(x)
    labels = _labels()
    obj = build_pair_objective(PairsConfig(loss=loss, miner="semihard", kwargs=kwargs, miner_kwargs=miner_kwargs))
    assert obj.miner.type_of_triplets == "semihard" and obj.miner.margin == pytest.approx(alpha)
    dist = _dist64(x)
    _check_facelab_distance(obj.miner, x, dist)

    a, p, n = obj.miner(x, labels)
    got = list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    want = _semihard_truth(labels.tolist(), dist, alpha)
    assert len(got) == len(set(got)), "a triplet returned twice"
    assert set(got) == want
    # the batch discriminates: a slightly different α, the hard or the all-violating rule give other sets
    assert 50 < len(want) < 24 * 3 * 20 // 2
    assert want != _semihard_truth(labels.tolist(), dist, alpha - 0.01)
    assert want != _semihard_truth(labels.tolist(), dist, alpha + 0.01)


# ---------------------------------------------------------------- distance weighted

N_DIM, CUTOFF, NONZERO_CUTOFF = 16, 0.5, 1.4  # PML's DistanceWeightedMiner defaults (facelab sets none)


def _dw_batch() -> torch.Tensor:
    """[24, 16] unit rows, identities of K consecutive rows. Identities 0-4 spread mostly in a 3-d subspace (their
    negative distances cover ~0.3-1.9) with last coordinate < 0; identity 5 sits tightly around e_16, so every
    negative of its anchors, and it as a negative of every other anchor, is at d > 1.4. Rows 4 (identity 1) and 8
    (identity 2) are planted at d = 0.3 and 0.45 from row 0: both below the 0.5 clamp, so they weigh the same."""
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(IDS * K, 3, generator=g, dtype=torch.float64)
    hi = 0.2 * torch.randn(IDS * K, N_DIM - 3, generator=g, dtype=torch.float64)
    x = torch.cat([lo, hi], dim=1)
    x[:, -1] = -0.35
    x = _unit(x)
    far = torch.zeros(K, N_DIM, dtype=torch.float64)
    far[:, -1] = 1.0
    x[(IDS - 1) * K:] = _unit(far + 0.05 * torch.randn(K, N_DIM, generator=g, dtype=torch.float64))
    x0 = x[0]
    for row, d in ((4, 0.3), (8, 0.45)):
        v = torch.randn(N_DIM, generator=g, dtype=torch.float64)
        v[-1] = 0.0
        v = v - (v @ x0) * x0  # orthogonal to x0
        v = v / v.norm()
        theta = 2 * math.asin(d / 2)  # chord d on the unit sphere
        x[row] = math.cos(theta) * x0 + math.sin(theta) * v
    return _unit(x).float()


def _dw_weights(labels: list[int], dist: list[list[float]], n: int) -> list[list[float]]:
    """METHODS.md / Wu et al. 2017 sampling probabilities of negative j for anchor i (rows sum to 1 or are 0)."""
    probs = []
    for i, row in enumerate(dist):
        w = []
        for j, d in enumerate(row):
            if labels[i] == labels[j] or d >= NONZERO_CUTOFF:
                w.append(0.0)
                continue
            dc = max(d, CUTOFF)
            w.append(dc ** (2 - n) * (1 - dc * dc / 4) ** ((3 - n) / 2))
        s = sum(w)
        probs.append([v / s if s > 0 else 0.0 for v in w])
    return probs


def test_distance_weighted_sampling_weights_equal_the_formula(monkeypatch):
    """The weight matrix PML's miner hands to its sampler, captured, equals the formula row by row (exact, no
    sampling noise: this is what pins n, the clamp and the cutoff sharply; the next test checks the draws)."""
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    seen = {}
    sample = lmu.get_random_triplet_indices

    def spy(labels, ref_labels=None, t_per_anchor=None, weights=None):
        seen["weights"] = weights.clone()
        return sample(labels, ref_labels=ref_labels, t_per_anchor=t_per_anchor, weights=weights)

    monkeypatch.setattr(lmu, "get_random_triplet_indices", spy)
    x, labels = _dw_batch(), _labels()
    obj = build_pair_objective(PairsConfig(loss="margin", miner="distance_weighted"))
    obj.miner(x, labels)
    probs = _dw_weights(labels.tolist(), _dist64(x), N_DIM)
    w = seen["weights"].double()
    kept = (IDS - 1) * K
    torch.testing.assert_close(w[:kept], torch.tensor(probs[:kept], dtype=torch.float64), rtol=1e-4, atol=1e-9)
    assert not (w[kept:] > 0).any(), "identity 5's anchors (all negatives at d > 1.4) get no weight (0/0 = nan)"


def test_distance_weighted_draws_negatives_with_the_sphere_weights():
    torch.manual_seed(1234)
    x, labels = _dw_batch(), _labels()
    obj = build_pair_objective(PairsConfig(loss="margin", miner="distance_weighted"))
    miner = obj.miner
    assert (miner.cutoff, miner.nonzero_loss_cutoff) == (CUTOFF, NONZERO_CUTOFF)
    dist = _dist64(x)
    _check_facelab_distance(miner, x, dist)
    assert abs(dist[0][4] - 0.3) < 1e-5 and abs(dist[0][8] - 0.45) < 1e-5
    lab = labels.tolist()
    probs = _dw_weights(lab, dist, N_DIM)
    kept = [i for i in range(IDS * K) if sum(probs[i]) > 0]
    assert kept == list(range((IDS - 1) * K)), "identity 5's anchors have no negative below 1.4; all others do"
    far = (IDS - 1) * K  # first row of identity 5
    assert all(dist[i][j] > 1.42 for i in range(IDS * K) for j in range(IDS * K) if (i >= far) != (j >= far))
    assert all(abs(dist[i][j] - NONZERO_CUTOFF) > 1e-3 for i in range(IDS * K) for j in range(IDS * K))

    calls = 500
    counts = torch.zeros(IDS * K, IDS * K, dtype=torch.long)  # [anchor, negative]
    pos_counts = torch.zeros(IDS * K, IDS * K, dtype=torch.long)
    for _ in range(calls):
        a, p, n = miner(x, labels)
        per_anchor = torch.bincount(a, minlength=IDS * K)
        assert per_anchor.tolist() == [K if i in kept else 0 for i in range(IDS * K)]
        counts.index_put_((a, n), torch.ones_like(a), accumulate=True)
        pos_counts.index_put_((a, p), torch.ones_like(a), accumulate=True)
    draws = calls * K  # per kept anchor

    for i in kept:
        for j in range(IDS * K):
            c, q = counts[i, j].item(), probs[i][j]
            if q == 0.0:  # same identity, or d >= 1.4 (the cutoff): never drawn
                assert c == 0, (i, j, dist[i][j])
                continue
            sigma = math.sqrt(max(q, 1 / draws) * (1 - q) / draws)
            assert abs(c / draws - q) <= 5 * sigma, (i, j, dist[i][j], c / draws, q)
        for j in range(IDS * K):  # the positive: uniform over the K - 1 other images of the identity
            c = pos_counts[i, j].item()
            if j == i or lab[j] != lab[i]:
                assert c == 0
            else:
                q = 1 / (K - 1)
                assert abs(c / draws - q) <= 5 * math.sqrt(q * (1 - q) / draws)
    # the clamp: anchor 0's planted negatives at 0.3 and 0.45 carry the same weight, most of the row's mass
    assert probs[0][4] == pytest.approx(probs[0][8]) and probs[0][4] + probs[0][8] > 0.5


# ---------------------------------------------------------------- uniform histogram


def _spread_batch(seed: int) -> torch.Tensor:
    """[24, 16] unit rows concentrated near a 3-d subspace: pair distances spread over ~0.1-2."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.randn(IDS * K, 3, generator=g)
    hi = 0.15 * torch.randn(IDS * K, 13, generator=g)
    return _unit(torch.cat([lo, hi], dim=1))


def _bins(pairs: list[tuple[int, int]], dist: list[list[float]], num_bins: int) -> dict[tuple[int, int], int]:
    """Equal-width bin of each pair's distance over [min, max] of these pairs (bins half-open, last one closed);
    no distance lies within 1e-6 of an inner edge, so float32 cannot move a pair to a neighbour."""
    ds = [dist[i][j] for i, j in pairs]
    lo, hi = min(ds), max(ds)
    width = (hi - lo) / num_bins
    out = {}
    for pair, d in zip(pairs, ds, strict=True):
        t = (d - lo) / width
        if 0 < t < num_bins:
            assert abs(t - round(t)) * width > 1e-6, "test batch has a pair distance on a bin edge"
        out[pair] = min(int(t), num_bins - 1)
    return out


@pytest.mark.parametrize("miner_kwargs", [{}, {"num_bins": 6, "pos_per_bin": 7, "neg_per_bin": 12}])
def test_uniform_histogram_draws_equally_from_every_nonempty_bin(miner_kwargs):
    torch.manual_seed(99)
    x, labels = _spread_batch(5), _labels()
    obj = build_pair_objective(PairsConfig(loss="margin", miner="uniform_histogram", miner_kwargs=miner_kwargs))
    miner = obj.miner
    num_bins = miner_kwargs.get("num_bins", 100)  # PML's defaults: facelab passes none
    per_bin = {"pos": miner_kwargs.get("pos_per_bin", 10), "neg": miner_kwargs.get("neg_per_bin", 10)}
    assert (miner.num_bins, miner.pos_per_bin, miner.neg_per_bin) == (num_bins, per_bin["pos"], per_bin["neg"])
    dist = _dist64(x)
    _check_facelab_distance(miner, x, dist)
    lab = labels.tolist()
    pairs = {
        "pos": [(i, j) for i in range(IDS * K) for j in range(IDS * K) if i != j and lab[i] == lab[j]],
        "neg": [(i, j) for i in range(IDS * K) for j in range(IDS * K) if lab[i] != lab[j]],
    }
    bins = {kind: _bins(pairs[kind], dist, num_bins) for kind in pairs}
    nonempty = {kind: sorted(set(bins[kind].values())) for kind in pairs}
    if num_bins == 100:  # the spread reaches many bins, and leaves some empty
        assert 15 < len(nonempty["pos"]) < 100 and 60 < len(nonempty["neg"]) < 100
    else:
        assert len(nonempty["pos"]) == len(nonempty["neg"]) == num_bins

    calls = 50 if num_bins == 100 else 200
    bin_of = {kind: torch.full((IDS * K, IDS * K), -1, dtype=torch.long) for kind in pairs}  # -1: not such a pair
    for kind in pairs:
        for (i, j), b in bins[kind].items():
            bin_of[kind][i, j] = b
    want = {kind: [per_bin[kind] if b in nonempty[kind] else 0 for b in range(num_bins)] for kind in pairs}
    picked = {kind: torch.zeros(IDS * K, IDS * K, dtype=torch.long) for kind in pairs}
    for _ in range(calls):
        a1, p, a2, n = miner(x, labels)
        for kind, (u, v) in (("pos", (a1, p)), ("neg", (a2, n))):
            b = bin_of[kind][u, v]
            assert (b >= 0).all(), f"a {kind} pair that is not one"
            assert torch.bincount(b, minlength=num_bins).tolist() == want[kind], kind
            picked[kind].index_put_((u, v), torch.ones_like(u), accumulate=True)

    for kind in pairs:  # within a bin the pairs are drawn uniformly
        members: dict[int, list[tuple[int, int]]] = {}
        for pair, b in bins[kind].items():
            members.setdefault(b, []).append(pair)
        for b, ps in members.items():
            draws, q = calls * per_bin[kind], 1 / len(ps)
            for i, j in ps:
                f = picked[kind][i, j].item() / draws
                assert abs(f - q) <= 5 * math.sqrt(max(q * (1 - q), 1 / draws) / draws), (kind, b, (i, j), f, q)


def test_distance_weighted_keeps_anchors_whose_negatives_are_all_far_at_face_embedding_sizes():
    """n = 512: anchors of identities 0/1 have a negative at d = 0.6 (log-weight 284.5), those of identities 2/3
    only one at d = 1.0 (73.2; the rest >= 1.4). One batch-wide maximum, as PML subtracts, underflows the
    second rows to 0 in float32 and drops those anchors; facelab's per-anchor normalisation draws the d = 1.0
    negative with probability 1 (the only one with a non-zero weight)."""
    n = 512
    e = torch.eye(n)
    x = e[0]
    y = 0.82 * e[0] + (1 - 0.82**2) ** 0.5 * e[1]  # |x - y| = sqrt(2 - 2·0.82) = 0.6
    u = e[3]  # sqrt(2) from x and y
    w = 0.5 * e[3] + 0.75**0.5 * e[4]  # |u - w| = 1.0, sqrt(2) from x and y
    emb = torch.stack([x, x, y, y, u, u, w, w])
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    miner = build_pair_objective(PairsConfig(loss="margin", miner="distance_weighted")).miner
    torch.manual_seed(0)
    a, p, neg = miner(emb, labels)
    pairs = {(int(i), int(j)) for i, j in zip(a, neg, strict=True)}
    assert {int(i) for i in a} == set(range(8))  # every anchor gets its triplets
    assert {j for i, j in pairs if i in (4, 5)} == {6, 7} and {j for i, j in pairs if i in (6, 7)} == {4, 5}
    assert {j for i, j in pairs if i in (0, 1)} == {2, 3} and {j for i, j in pairs if i in (2, 3)} == {0, 1}
