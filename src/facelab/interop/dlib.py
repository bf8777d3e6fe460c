"""dlib's face-recognition ResNet file -> facelab's DlibResNet (backbones/dlib_resnet.py), with
the parameters read by interop/dlib_reader.py (`load_dlib_resnet`), and as a facelab run folder
(`import_dlib`: `facelab import dlib`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facelab.backbones.dlib_resnet import (
    DLIB_MEAN_RGB,
    EMBEDDING_SIZE,
    DlibResNet,
    dlib_preprocess,
)
from facelab.config import config_from_dict, config_to_dict
from facelab.errors import FacelabError
from facelab.interop.dlib_reader import DlibLayer, read_dlib_resnet
from facelab.interop.folders import check_import_folder
from facelab.interop.insightface import file_sha256
from facelab.io import check_output_folder
from facelab.model import CHECKPOINT_NAME, build_model, save_checkpoint


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


# ------------------------------------------------------------------------- run folder

MODELS_PACKAGE = "face_recognition_models"  # pip install face-recognition-models (CC0 files)
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
TEMPLATE = "dlib150"  # facelab's MTCNN points in dlib's get_face_chip(size=150, padding=0.25)


def installed_model_file() -> Path:
    """dlib_face_recognition_resnet_model_v1.dat of the installed face_recognition_models package,
    found by path: importing the package needs pkg_resources, which newer setuptools lack.
    FacelabError with the pip command when it is not installed."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "models" / MODEL_FILE
        if path.is_file():
            return path
    raise FacelabError(f"{MODEL_FILE} not found: give the file, or install dlib's released "
                       "models with `pip install face-recognition-models`")


def import_dlib(src: Path | None, out: Path) -> dict[str, Any]:
    """Turn dlib's face-recognition ResNet file `src` (None: the one of the installed
    face_recognition_models package) into facelab run folder `out`.

    `out/checkpoint.pt` holds the DlibResNet weights, a config (model.backbone dlib_resnet,
    embedding_size 128), dlib's preprocessing (150x150 RGB, (x - mean_rgb)/256) with template
    dlib150, step 0 and an "imported" record (from, source, sha256 of the file), so
    facelab.model.load_model, evaluation, export and facelab.recognize use it like a trained run.
    Folder rules as import_insightface's: `out` must be new, empty or hold only an earlier dlib
    import (replaced atomically); no config.yaml is written (not a run to resume). `out` is
    proven writable before the file is read.

    Returns {"backbone", "tensors", "parameters", "embedding_size", "out", "checkpoint",
    "source", "sha256"}.
    """
    src = installed_model_file() if src is None else Path(src)
    out = Path(out)
    check_import_folder(out, "dlib")
    check_output_folder(out, "import folder")
    net, preprocess = load_dlib_resnet(src)
    cfg = config_from_dict({"name": "dlib-resnet-v1", "output": str(out),
                            "model": {"backbone": "dlib_resnet",
                                      "embedding_size": EMBEDDING_SIZE}})
    model = build_model(cfg)
    model.load_state_dict(net.state_dict(), strict=True)  # same class: cannot fail
    weights = model.state_dict()
    sha256 = file_sha256(src)
    source = str(src.resolve())
    payload = {
        "model": weights,
        "config": config_to_dict(cfg),
        "preprocess": {**preprocess, "template": TEMPLATE},
        "step": 0,
        "imported": {"from": "dlib", "source": source, "sha256": sha256},
    }
    try:
        save_checkpoint(out / CHECKPOINT_NAME, payload)
    except OSError as e:
        raise FacelabError(f"{out / CHECKPOINT_NAME}: cannot write ({e.strerror or e})") from None
    return {
        "backbone": "dlib_resnet",
        "tensors": len(weights),
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_size": EMBEDDING_SIZE,
        "out": str(out),
        "checkpoint": str(out / CHECKPOINT_NAME),
        "source": source,
        "sha256": sha256,
    }


__all__ = ["MODEL_FILE", "TEMPLATE", "dlib_resnet_from_layers", "import_dlib",
           "installed_model_file", "load_dlib_resnet"]
