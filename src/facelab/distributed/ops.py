"""Collectives with gradients, for a loss that every rank computes in full (a *replicated* loss).

The convention (DESIGN.md): every rank holds the same global loss L; each rank back-propagates L / N
(`replicated_loss`), and the backward of every collective sums the incoming gradients over ranks.
Then a tensor that only one rank holds (a shard of class centres, this rank's rows of the batch)
gets Σ_r (1/N)·∂L_r/∂x = ∂L/∂x exactly, whatever mix of sharded and replicated
computations lies between it and L (a margin's per-sample regulariser, replicated on every rank, is
then counted once, not N times).

`gather_rows` returns this rank's rows of that sum times N, because DistributedDataParallel
*averages* the backbone gradients over ranks: the average of N·(∂L/∂x_r ·∂x_r/∂θ) is the
full gradient ∂L/∂θ. At world size 1 (or without an initialised process group) every function
is the identity.

An objective that needs the whole batch (DDL's histograms, DAIL's dataset classifier) gathers its
inputs with `gather_rows` and computes the global loss L on every rank. Without parameters of its
own it returns `replicated_loss(L)`. With parameters (replicated, outside DDP) it instead scales the
gradient of its gathered inputs by 1/N (`scale_grad`) and returns L itself: its parameters get the
full ∂L/∂W, the same on every rank, so their copies stay identical without communication, and
the rows get what they get above.
"""

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group; (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_r x_r on every rank; ∂/∂x_r = Σ_r' g_r' (the gradients of the replicated
    copies of y)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


class _GatherRows(torch.autograd.Function):
    """[b, ...] per rank -> [N·b, ...] (rank order) on every rank; backward:
    N·(Σ_r g_r)[this rank's rows]."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        rank, size = world()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.size, ctx.rows = rank, size, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        g = g.contiguous().clone()
        dist.all_reduce(g)  # Σ over ranks; reduce_scatter would do, but gloo lacks it
        return ctx.size * g[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_reduce_sum(x: Tensor) -> Tensor:
    """Σ over ranks of x, differentiable (see the module docstring); identity at world size 1."""
    return _AllReduceSum.apply(x) if world()[1] > 1 else x


def all_reduce_max(x: Tensor) -> Tensor:
    """Element-wise max over ranks, without gradient (a shift for a stable log-sum-exp)."""
    x = x.detach().clone()
    if world()[1] > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def gather_rows(x: Tensor) -> Tensor:
    """Every rank's rows [b, ...] concatenated in rank order [N·b, ...]; needs the same b on every
    rank.
    Differentiable for float tensors; integer tensors (labels) are gathered without gradient."""
    if world()[1] == 1:
        return x
    if not x.is_floating_point():
        rank, size = world()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return _GatherRows.apply(x)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        return g * ctx.factor, None


def scale_grad(x: Tensor, factor: float) -> Tensor:
    """Identity forward; backward multiplies the gradient by `factor`."""
    return _ScaleGrad.apply(x, float(factor))


def replicated_loss(loss: Tensor) -> Tensor:
    """The value of a loss every rank computes in full, with gradient 1/N (see the module
    docstring)."""
    size = world()[1]
    return scale_grad(loss, 1.0 / size) if size > 1 else loss
