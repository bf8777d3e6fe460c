"""Every margin head under CPU autocast (float16 and bfloat16): loss in float32, loss and every
gradient finite.

The numerical-safety requirement (logits and cross-entropy in float32, FaceHead's docstring); bf16
also through the training loop in tests/train/test_every_head_trains.py. The fp16 batch holds the
clamp edges: a row equal to its class centre (cos θ_y = 1) and one opposite to it
(cos θ_y = -1, all K sub-centres of that class set equal so that the max over them is -1 too). Centres
and embeddings are float16-representable (scaled by powers of two), so the edges survive the fp16
rounding of the inputs; embeddings are fed as float32 and as float16 (a backbone's output under autocast).
"""

import pytest
import torch

from facelab.heads import MARGINS, build_head

D, C, B = 16, 7, 10
EDGE = {0: 16.0, 1: -32.0}  # row -> x = scale · W_y: cos θ_y = +1 and -1; norms 16·|W_y|, 32·|W_y| ~ 64, 128


def edge_batch(head, seed=0):
    """Embeddings [B, D] (the edge rows and random ones, norms about 1 to 150) and labels [B]."""
    g = torch.Generator().manual_seed(seed)
    k = head.classifier.sub_centers
    with torch.no_grad():
        w = torch.randn(C * k, D, generator=g).half().float()
        labels = torch.randint(0, C, (B,), generator=g)
        labels[1] = (labels[0] + 1) % C  # the -1 row's class differs from the +1 row's
        w.view(C, k, D)[labels[1]] = w[labels[1] * k]  # every sub-centre of the -1 row's class alike
        head.classifier.weight.copy_(w)
        x = torch.randn(B, D, generator=g)
        x = x / x.norm(dim=1, keepdim=True) * torch.linspace(1.0, 150.0, B)[:, None]
        for row, scale in EDGE.items():
            x[row] = scale * w[labels[row] * k]
    return x.half().float(), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["x_fp32", "x_fp16"])
@pytest.mark.parametrize("name", sorted(MARGINS))
def test_head_forward_backward_under_fp16_autocast(name, dtype):
    torch.manual_seed(0)
    head = build_head(name, D, C).train()
    x, labels = edge_batch(head)
    x = x.to(dtype).requires_grad_(True)
    if head.classifier.normalize:  # the edges are exact in the classifier's float32 cosines (up to rounding)
        cos = head.classifier(x.detach(), labels).target_cos
        torch.testing.assert_close(cos[list(EDGE)], torch.tensor([1.0, -1.0]), rtol=0, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.float16):
        losses = head(x, labels)
    assert losses["loss"].dtype == torch.float32 and losses["ce"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values()), losses
    losses["loss"].backward()
    assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    grads = {n: p.grad for n, p in head.named_parameters() if p.grad is not None}
    assert "classifier.weight" in grads
    assert all(torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if not g.isfinite().all()]


@pytest.mark.parametrize("name", sorted(MARGINS))
def test_every_head_trains_under_bf16_autocast(name):
    torch.manual_seed(0)
    head = build_head(name, 16, 7).train()
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    for _ in range(3):
        x = (torch.randn(12, 16) * 30).requires_grad_(True)
        labels = torch.randint(0, 7, (12,))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = head(x, labels)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        losses["loss"].backward()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
        opt.step()
