"""Multiply-accumulate (MAC) counter for conv and linear layers.

MACs of a conv = output elements x (in_channels / groups) x kernel area; of a linear layer =
output elements x in_features. BN, activations, pooling and additions are not counted (the usual
convention behind "IResNet-50: 6.3 G"). One MAC is two FLOPs: tools that report FLOPs (e.g.
OpenVINO's model zoo) give twice these numbers.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def layer_macs(module: nn.Module, output: Tensor) -> int:
    """MACs one conv/linear layer spent producing `output`."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return output.numel() * per_output


def _run(model: nn.Module, x: Tensor) -> int:
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        nonlocal total
        total += layer_macs(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 112, 112)) -> int:
    """Forward MACs of `model` on an input of `input_size` (batch included), counted with forward
    hooks.

    Runs on a copy on the meta device (no compute, no memory); falls back to an eval-mode CPU
    forward of the model itself when the meta forward fails. `model` is left unchanged.
    """
    try:
        on_meta = all(p.is_meta for p in model.parameters())
        meta_model = model if on_meta else copy.deepcopy(model).to(torch.device("meta"))
        was_training = meta_model.training
        meta_model.eval()
        try:
            return _run(meta_model, torch.empty(input_size, device="meta"))
        finally:
            meta_model.train(was_training)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        log.info("meta-device MAC count failed (%s); counting on CPU", err)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters(), torch.empty(0)).device
        return _run(model, torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
