"""normalized_linear: cosines to the class centres without a normalised copy of the centres, equal to
F.linear(x, F.normalize(W)) with its gradients, and keeping no C×d tensor but W itself for the backward."""

import torch
import torch.nn.functional as F

from facelab.heads import Classifier
from facelab.heads.normalized_linear import normalized_linear


def inputs(b=5, c=9, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    w = (3.0 * torch.randn(c, d, generator=g, dtype=torch.float64)).requires_grad_()
    return x, w


def test_gradients_match_finite_differences():
    assert torch.autograd.gradcheck(normalized_linear, inputs())


def test_equals_linear_of_the_normalised_centres_with_gradients():
    x, w = inputs(b=6, c=11, d=4, seed=1)
    with torch.no_grad():
        w[3] = 0.0  # a zero row: |w| is taken as eps and gets no gradient through the norm, as in F.normalize
        w[5] *= 1e-9
    ref = F.linear(x, F.normalize(w, dim=1))
    got = normalized_linear(x, w)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(got, (x, w), g), torch.autograd.grad(ref, (x, w), g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * b.abs().max().item())


def saved_tensors(fn) -> list[torch.Tensor]:
    """The tensors autograd keeps for the backward pass of fn()."""
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return kept


def test_the_classifier_keeps_no_normalised_copy_of_the_centres():
    clf = Classifier(16, 500)  # centres [500, 16]
    x, labels = torch.randn(4, 16), torch.tensor([1, 2, 3, 499])
    big = [t for t in saved_tensors(lambda: clf(x, labels)) if t.shape == clf.weight.shape]
    assert big and all(t.data_ptr() == clf.weight.data_ptr() for t in big)  # only the parameter itself
    w = clf.weight  # the plain way keeps a normalised copy: the check above can fail
    plain = saved_tensors(lambda: F.linear(F.normalize(x, dim=1), F.normalize(w, dim=1)))
    assert any(t.shape == w.shape and t.data_ptr() != w.data_ptr() for t in plain)
