"""BatchNorm with statistics over the global batch on CPU (gloo): torch's SyncBatchNorm is GPU-only.

Training mode: mean μ = Σ_r Σ x / n and biased variance σ² = Σ_r Σ (x - μ)² / n over the
rows (and spatial positions) of every rank, n the global count, by two differentiable all-reduces
(ops.all_reduce_sum); y = (x - μ)/sqrt(σ² + eps)·γ + β; running statistics updated as
nn.BatchNorm (unbiased variance). So a multi-process run normalises exactly like one process with
the whole batch (Ioffe & Szegedy 2015, Eq. in Alg. 1, with the batch spread over ranks). Eval mode:
the running statistics, as nn.BatchNorm.
"""

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from facelab.distributed.ops import all_reduce_sum


class GlobalBatchNorm(_BatchNorm):
    """Drop-in for BatchNorm1d/2d (same parameters, buffers and state-dict keys)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"GlobalBatchNorm: expected at least 2-D input, got {x.ndim}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.ndim)]  # every axis but the channels
        shape = [1, -1] + [1] * (x.ndim - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        n = all_reduce_sum(count)
        mean = all_reduce_sum(x.sum(dims)) / n  # [C]
        var = all_reduce_sum(((x - mean.view(shape)) ** 2).sum(dims)) / n  # [C], biased
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp(min=1))
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased: Tensor) -> None:
        self.num_batches_tracked += 1
        rate = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - rate).add_(rate * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - rate).add_(rate * unbiased.to(self.running_var.dtype))


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in `module` (in place, recursively) by a GlobalBatchNorm
    holding the same parameters and buffers; returns the module (a new one when `module` itself is a
    BatchNorm)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        return new.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module



