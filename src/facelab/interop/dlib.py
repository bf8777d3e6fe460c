"""dlib's face-recognition ResNet file -> facelab's DlibResNet (backbones/dlib_resnet.py), with
the parameters read by interop/dlib_reader.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from facelab.backbones.dlib_resnet import DLIB_MEAN_RGB, DlibResNet, dlib_preprocess
from facelab.errors import FacelabError
from facelab.interop.dlib_reader import DlibLayer, read_dlib_resnet


def _modules_in_dlib_order(net: DlibResNet) -> list[nn.Module]:
    """Convolutions, affines and the fc in dlib's forward order."""
    order: list[nn.Module] = [net.conv1, net.affine1]
    for block in net.blocks:
        order += [block.conv1, block.affine1, block.conv2, block.affine2]
    return [*order, net.fc]


def dlib_resnet_from_layers(layers: list[DlibLayer]) -> tuple[DlibResNet, dict]:
    """A DlibResNet holding the parameters of `layers` (`read_dlib_resnet`'s output) and its
    facelab preprocessing record (dlib's input means)."""
    weighted = [layer for layer in layers if layer.kind in ("con", "affine", "fc")]
    net = DlibResNet()
    targets = _modules_in_dlib_order(net)
    if len(weighted) != len(targets):
        raise FacelabError(f"dlib network has {len(weighted)} weighted layers, DlibResNet "
                           f"{len(targets)}")
    with torch.no_grad():
        for i, (layer, module) in enumerate(zip(weighted, targets, strict=True)):
            if layer.kind == "affine" and layer.attrs.get("disabled"):
                raise FacelabError(f"dlib layer {i}: a disabled (fused) affine is not supported")
            if layer.kind == "con" and layer.attrs.get("relu"):
                raise FacelabError(f"dlib layer {i}: a convolution with fused relu is not "
                                   "supported")
            names = {"con": ("weight", "bias"), "affine": ("gamma", "beta"), "fc": ("weight",)}
            for source, target in zip(names[layer.kind], ("weight", "bias"), strict=False):
                param = getattr(module, target)
                if source not in layer.params:          # a dlib convolution without bias
                    param.zero_()
                    continue
                value = torch.from_numpy(np.ascontiguousarray(layer.params[source]))
                if tuple(value.shape) != tuple(param.shape):
                    raise FacelabError(f"dlib layer {i} ({layer.kind}) {source}: shape "
                                       f"{tuple(value.shape)}, DlibResNet {tuple(param.shape)}")
                param.copy_(value)
    mean = layers[0].attrs.get("mean_rgb", DLIB_MEAN_RGB) if layers[0].kind == "input" \
        else DLIB_MEAN_RGB
    return net.eval(), dlib_preprocess(tuple(mean))


def load_dlib_resnet(path: str | Path) -> tuple[DlibResNet, dict]:
    """DlibResNet and preprocessing record from dlib_face_recognition_resnet_model_v1.dat."""
    return dlib_resnet_from_layers(read_dlib_resnet(path))


