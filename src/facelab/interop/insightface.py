"""insightface arcface_torch backbone checkpoints in and out (`backbone.pth` and the like).

arcface_torch (github deepinsight/insightface, `recognition/arcface_torch`) saves its backbones as
plain state dicts, `torch.save(backbone.module.state_dict(), "model.pt")`; its released models are
the same as `backbone.pth`. Its IResNets (ArcFace, Deng et al. 2019) are facelab's `iresnet*`
(backbones/iresnet.py, neck.py) and its MobileFaceNets facelab's `mbf` / `mbf_large`
(backbones/mbf.py): the same tensors with the same shapes in the same order, under other names. The
names are translated by explicit rules (`insightface_name`, one rule per kind of module) from the
state dict of a facelab model built on the meta device, so the table follows the facelab code; the
tests compare the translated tables with ones listed from insightface's own model classes.

Both directions are strict: every tensor of the source used, every tensor of the target filled,
shapes checked, and the first problem named in one FacelabError line. Two leniencies, both exact:

- a `module.` prefix on every name (a DataParallel / DDP state dict) is dropped;
- missing BatchNorm `num_batches_tracked` counters (state dicts from PyTorch < 0.4.1) are filled
  with 0, as torch's own strict `load_state_dict` does for a state dict without version metadata;
  they only matter for BN layers with momentum None, which neither side has.

Reading: `import_insightface` turns a `.pth` into a facelab run folder (`checkpoint.pt`, usable by
`facelab.model.load_model`, evaluation and export); `export_insightface` writes a facelab
checkpoint back as a state dict that insightface's model class of that arch loads strictly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from facelab.backbones import build_backbone
from facelab.config import Config, ModelConfig, config_to_dict
from facelab.errors import FacelabError
from facelab.interop.folders import check_import_folder
from facelab.io import check_output_folder, write_atomic
from facelab.model import (
    CHECKPOINT_NAME,
    build_model,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from facelab.onnx_model import first_line

# insightface's `get_model` names (arcface_torch/backbones/__init__.py) -> facelab backbones
ARCHS: dict[str, str] = {
    "r18": "iresnet18",
    "r34": "iresnet34",
    "r50": "iresnet50",
    "r100": "iresnet100",
    "r200": "iresnet200",
    "mbf": "mbf",
    "mbf_large": "mbf_large",
}
# arcface_torch's preprocessing: RGB crops of the 112x112 ArcFace template, (x/255 - 0.5)/0.5
PREPROCESS: dict[str, Any] = {"template": "arcface112", "size": 112, "colour": "RGB", "mean": 0.5,
                              "std": 0.5}
SHOWN = 3  # names quoted in an error about missing or unexpected tensors
_COUNTER = "num_batches_tracked"

# --------------------------------------------------------------------------- name rules
#
# facelab iresnet: stem.{0 conv, 1 bn, 2 prelu}; stages.S.U.body.{0..5}; stages.S.U.shortcut.{0,1};
# neck.{bn, fc, features}. insightface: conv1, bn1, prelu; layer{S+1}.U.{bn1, conv1, bn2, prelu,
# conv2, bn3}; layer{S+1}.U.downsample.{0,1}; bn2, fc, features.
_IRESNET_STEM = ("conv1", "bn1", "prelu")
_IRESNET_BODY = ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3")
_IRESNET_NECK = {"bn": "bn2", "fc": "fc", "features": "features"}
# facelab mbf: stem.N, first.N (grouped conv) or first.J.body.I.N, stages.K.J.body.I.N, conv.N,
# gdc.N, fc, features (N: conv 0, bn 1, prelu 2). insightface: a ModuleList `layers` of
# ConvBlock / DepthWise / Residual modules, each wrapping an nn.Sequential called `layers`; stage K
# is its stride-2 DepthWise layers[2 + 2K] and its Residual layers[3 + 2K]; conv_sep; features =
# GDC: layers.{0 LinearBlock, 1 Flatten, 2 Linear, 3 BatchNorm1d}.
Rule = tuple[str, Callable[[re.Match[str]], str]]
NameRow = tuple[str, str, tuple[int, ...]]  # (facelab name, insightface name, shape)
_RULES: dict[str, list[Rule]] = {
    "iresnet": [
        (r"stem\.(\d)\.(\w+)", lambda m: f"{_IRESNET_STEM[int(m[1])]}.{m[2]}"),
        (r"stages\.(\d+)\.(\d+)\.body\.(\d)\.(\w+)",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.{_IRESNET_BODY[int(m[3])]}.{m[4]}"),
        (r"stages\.(\d+)\.(\d+)\.shortcut\.(\d)\.(\w+)",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{m[3]}.{m[4]}"),
        (r"neck\.(bn|fc|features)\.(\w+)", lambda m: f"{_IRESNET_NECK[m[1]]}.{m[2]}"),
    ],
    "mbf": [
        (r"stem\.(\d)\.(\w+)", lambda m: f"layers.0.layers.{m[1]}.{m[2]}"),
        (r"first\.(\d)\.(\w+)", lambda m: f"layers.1.layers.{m[1]}.{m[2]}"),
        (r"first\.(\d+)\.body\.(\d)\.(\d)\.(\w+)",
         lambda m: f"layers.1.layers.{m[1]}.layers.{m[2]}.layers.{m[3]}.{m[4]}"),
        (r"stages\.(\d)\.0\.body\.(\d)\.(\d)\.(\w+)",
         lambda m: f"layers.{2 + 2 * int(m[1])}.layers.{m[2]}.layers.{m[3]}.{m[4]}"),
        (r"stages\.(\d)\.(\d+)\.body\.(\d)\.(\d)\.(\w+)",
         lambda m: (f"layers.{3 + 2 * int(m[1])}.layers.{int(m[2]) - 1}.layers.{m[3]}"
                    f".layers.{m[4]}.{m[5]}")),
        (r"conv\.(\d)\.(\w+)", lambda m: f"conv_sep.layers.{m[1]}.{m[2]}"),
        (r"gdc\.(\d)\.(\w+)", lambda m: f"features.layers.0.layers.{m[1]}.{m[2]}"),
        (r"fc\.(\w+)", lambda m: f"features.layers.2.{m[1]}"),
        (r"features\.(\w+)", lambda m: f"features.layers.3.{m[1]}"),
    ],
}
# the embedding layer's weight [d, in] per family: (facelab name, insightface name)
_FC = {"iresnet": ("neck.fc.weight", "fc.weight"),
       "mbf": ("fc.weight", "features.layers.2.weight")}
# the final BatchNorm1d, without weight and bias in a facelab model built with fc_bn="none"
_FEATURES_BN = {"iresnet": "neck.features", "mbf": "features"}


def check_arch(arch: str) -> str:
    """`arch` if it is one of ARCHS, else FacelabError listing them."""
    if arch not in ARCHS:
        raise FacelabError(f"unknown insightface arch {arch!r}; choices: {', '.join(ARCHS)}")
    return arch


def _family(arch: str) -> str:
    return "mbf" if check_arch(arch).startswith("mbf") else "iresnet"


def insightface_name(name: str, arch: str) -> str:
    """The insightface name of facelab backbone tensor `name` (ARCHS[arch]), by the rules above."""
    for pattern, rule in _RULES[_family(arch)]:
        match = re.fullmatch(pattern, name)
        if match:
            return rule(match)
    raise ValueError(f"no insightface name rule for facelab tensor {name!r} ({arch})")


@lru_cache(maxsize=16)
def name_table(arch: str, embedding_size: int = 512) -> tuple[NameRow, ...]:
    """(facelab name, insightface name, shape) of every tensor of `arch`, in state-dict order (the
    same on both sides). Built from a facelab model on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = build_backbone(ARCHS[check_arch(arch)], embedding_size=embedding_size)
    table = tuple((name, insightface_name(name, arch), tuple(t.shape))
                  for name, t in model.state_dict().items())
    if len({row[1] for row in table}) != len(table):  # the rules must be one-to-one
        raise ValueError(f"insightface name rules for {arch} map two tensors to one name")
    return table


# --------------------------------------------------------------------------- state dicts


def guess_arch(state: dict[str, Any]) -> str | None:
    """The insightface arch whose tensor names `state` has (with or without a `module.` prefix),
    or None. For error messages, and for a CLI that wants to suggest --arch."""
    names = set(_strip_module(state))
    for arch in ARCHS:
        theirs = {row[1] for row in name_table(arch)}
        required = {n for n in theirs if not n.endswith(_COUNTER)}
        if required <= names <= theirs:
            return arch
    return None


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    """`state` without the `module.` prefix DataParallel / DDP put on every name (only when every
    name has it)."""
    prefix = "module."
    if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _check_tensors(state: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise FacelabError(f"{where}: not a state dict (holds a {type(state).__name__})")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise FacelabError(f"{where}: not a backbone state dict (entry {key!r} holds "
                               f"{type(value).__name__}, not a tensor)")
    return state


def _embedding_size(state: dict[str, torch.Tensor], name: str) -> int:
    """d of the embedding layer's weight [d, in] when `state` has it, else insightface's 512."""
    weight = state.get(name)
    if weight is not None and weight.dim() == 2 and weight.shape[0] >= 1:
        return int(weight.shape[0])
    return 512


def _quote(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return str(list(shape))


def _rename(state: dict[str, torch.Tensor], pairs: list[NameRow],
            where: str, what: str, hint: Callable[[], str]) -> dict[str, torch.Tensor]:
    """{target name: state[source name]} for every (source, target, shape) of `pairs`, strictly:
    the first shape mismatch (in state-dict order), else the missing, else the unexpected names,
    named in a FacelabError (`what`: the expected model; `hint()`: what to check)."""
    for source, _, shape in pairs:
        tensor = state.get(source)
        if tensor is not None and tuple(tensor.shape) != shape:
            raise FacelabError(f"{where}: tensor {source!r} has shape {_shape(tensor.shape)}, "
                               f"{what} expects {_shape(shape)}; {hint()}")
    state = dict(state)
    missing = [source for source, _, _ in pairs if source not in state]
    if missing and all(n.endswith(_COUNTER) for n in missing):
        state.update({n: torch.tensor(0, dtype=torch.long) for n in missing})  # see module doc
        missing = []
    if missing:
        raise FacelabError(f"{where}: {len(missing)} of the {len(pairs)} tensors of {what} are "
                           f"missing: {_quote(missing)}; {hint()}")
    expected = {source for source, _, _ in pairs}
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise FacelabError(f"{where}: {len(unexpected)} tensor(s) that {what} does not have: "
                           f"{_quote(unexpected)}; {hint()}")
    return {target: state[source] for source, target, _ in pairs}


def _arch_hint(state: dict[str, torch.Tensor], arch: str) -> str:
    guess = guess_arch(state)
    if guess is not None and guess != arch:
        return f"the tensors are those of insightface {guess}: is --arch right?"
    return "is --arch right?"


def facelab_state(insightface_state: dict, arch: str, where: str) -> dict[str, torch.Tensor]:
    """An arcface_torch backbone state dict of `arch` (ARCHS) renamed to facelab's backbone
    ARCHS[arch], in facelab's order; the tensors themselves are shared, not copied.

    Strict (see the module docstring for the two exact leniencies): FacelabError prefixed with
    `where` (the file) naming the first tensor of wrong shape, else the first missing or unexpected
    tensors. The embedding size is read from the checkpoint's embedding layer (`fc` /
    `features.layers.2` weight [d, in])."""
    family = _family(arch)
    state = _strip_module(_check_tensors(insightface_state, where))
    size = _embedding_size(state, _FC[family][1])
    pairs = [(theirs, ours, shape) for ours, theirs, shape in name_table(arch, size)]
    return _rename(state, pairs, where, f"insightface {arch}", lambda: _arch_hint(state, arch))


def insightface_state(facelab_state: dict, arch: str,
                      where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The inverse of `facelab_state`: a facelab ARCHS[arch] backbone state dict renamed to what
    insightface's model class of `arch` loads strictly, in its order (tensors shared).

    A facelab model built with fc_bn="none" has no affine final BN; it gets weight 1 and bias 0,
    which compute the same. FacelabError (prefixed with `where`) for anything else that does not
    fit."""
    family = _family(arch)
    state = dict(_check_tensors(facelab_state, where))
    size = _embedding_size(state, _FC[family][0])
    bn = _FEATURES_BN[family]
    if f"{bn}.weight" not in state and f"{bn}.bias" not in state and f"{bn}.running_var" in state:
        var = state[f"{bn}.running_var"]  # [d]
        state[f"{bn}.weight"], state[f"{bn}.bias"] = torch.ones_like(var), torch.zeros_like(var)
    pairs = list(name_table(arch, size))
    backbone = ARCHS[arch]
    return _rename(state, pairs, where, f"facelab {backbone}",
                   lambda: f"is this a {backbone} checkpoint (insightface {arch})?")


# --------------------------------------------------------------------------- files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_insightface(src: Path) -> dict[str, torch.Tensor]:
    """The backbone state dict of an arcface_torch file: a saved state dict (`backbone.pth`,
    `model.pt`, names maybe prefixed `module.`) or a resume checkpoint `checkpoint_gpu_N.pt`
    (its "state_dict_backbone"). Loaded with weights_only (no code runs); one-line FacelabError
    naming the file when it cannot be read."""
    src = Path(src)
    if not src.is_file():
        raise FacelabError(f"{src}: no such file")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, pickled code: one message
        raise FacelabError(f"{src}: cannot read insightface checkpoint ({type(e).__name__}: "
                           f"{first_line(e)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict_backbone"), dict):
        obj = obj["state_dict_backbone"]
    return _check_tensors(obj, str(src))


def import_insightface(src: Path, arch: str, out: Path) -> dict[str, Any]:
    """Turn arcface_torch backbone `src` (`backbone.pth`) of `arch` into facelab run folder `out`.

    `out/checkpoint.pt` holds the renamed weights, a config (model.backbone = ARCHS[arch],
    embedding_size from the weights), arcface_torch's preprocessing (RGB, arcface112, mean/std 0.5),
    step 0 and an "imported" record (from, arch, source, sha256 of the file). No config.yaml is
    written: the folder is a model to evaluate or export, not a run `facelab train --resume` could
    continue (it has no classifier or optimiser state), and without one it refuses the folder
    clearly. `out` must be new, empty or hold only an earlier insightface import (whose checkpoint
    is replaced, atomically); anything else is refused, so a training run is never overwritten and
    no evaluation is left beside weights it did not measure.
    `out` is proven writable before the file is read.

    Returns {"arch", "backbone", "tensors", "parameters", "embedding_size", "out", "checkpoint",
    "source", "sha256"}.
    """
    check_arch(arch)
    src, out = Path(src), Path(out)
    check_import_folder(out, "insightface")
    check_output_folder(out, "import folder")
    state = facelab_state(read_insightface(src), arch, str(src))
    backbone = ARCHS[arch]
    size = _embedding_size(state, _FC[_family(arch)][0])
    cfg = Config(name=f"insightface-{arch}", output=str(out),
                 model=ModelConfig(backbone=backbone, embedding_size=size))
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)  # cannot fail: facelab_state checked every tensor
    weights = model.state_dict()
    sha256 = file_sha256(src)
    payload = {
        "model": weights,
        "config": config_to_dict(cfg),
        "preprocess": dict(PREPROCESS),
        "step": 0,
        "imported": {"from": "insightface", "arch": arch, "source": str(src.resolve()),
                     "sha256": sha256},
    }
    try:
        save_checkpoint(out / CHECKPOINT_NAME, payload)
    except OSError as e:
        raise FacelabError(f"{out / CHECKPOINT_NAME}: cannot write ({e.strerror or e})") from None
    return {
        "arch": arch,
        "backbone": backbone,
        "tensors": len(weights),
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_size": size,
        "out": str(out),
        "checkpoint": str(out / CHECKPOINT_NAME),
        "source": str(src.resolve()),
        "sha256": sha256,
    }


def arch_of(model_config: dict, where: str) -> str:
    """The insightface arch of a checkpoint's `model` config section; FacelabError naming a
    backbone (or a GroupFace wrapper) that insightface has no counterpart of."""
    backbone = model_config.get("backbone")
    if model_config.get("groupface", {}).get("groups", 0):
        raise FacelabError(f"{where}: backbone {backbone!r} is wrapped in GroupFace, which "
                           "insightface's backbones do not have; it cannot be exported to "
                           "insightface")
    for arch, name in ARCHS.items():
        if name == backbone:
            return arch
    raise FacelabError(f"{where}: backbone {backbone!r} has no insightface counterpart; "
                       f"exportable: {', '.join(ARCHS.values())}")


def export_insightface(run_or_checkpoint: str | Path, out: Path,
                       arch: str | None = None) -> dict[str, Any]:
    """Write the embedding network of a facelab run (or checkpoint) as an arcface_torch backbone
    state dict `out` (`torch.save`, atomically), loadable strictly by insightface's model class of
    `arch` (`get_model(arch)` in arcface_torch; None: the arch of the checkpoint's backbone).

    FacelabError for a backbone without an insightface counterpart (tiny, mobilefacenet, anything
    GroupFace-wrapped), an `arch` that is not the checkpoint's, an `out` that is a folder or the
    checkpoint itself. Returns {"arch", "backbone", "tensors", "embedding_size", "out", "bytes",
    "source"}."""
    out = Path(out)
    if arch is not None:
        check_arch(arch)
    if out.is_dir():
        raise FacelabError(f"{out}: is a folder; give the file to write, e.g. "
                           f"{out / 'backbone.pth'}")
    check_output_folder(out.parent, f"folder of {out.name}")
    path = resolve_checkpoint(run_or_checkpoint)
    if out.exists() and out.resolve() == path.resolve():
        raise FacelabError(f"{out}: is the facelab checkpoint being exported; give another file")
    ckpt = load_checkpoint(path)
    model_config = ckpt["config"].get("model", {})
    found = arch_of(model_config, str(path))
    if arch is not None and arch != found:
        raise FacelabError(f"{path}: backbone {model_config.get('backbone')!r} is insightface "
                           f"{found}, not {arch}; leave the arch out or give {found}")
    state = insightface_state(ckpt["model"], found, str(path))
    try:
        write_atomic(out, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        raise FacelabError(f"{out}: cannot write ({e.strerror or e})") from None
    return {
        "arch": found,
        "backbone": ARCHS[found],
        "tensors": len(state),
        "embedding_size": _embedding_size(state, _FC[_family(found)][1]),
        "out": str(out),
        "bytes": out.stat().st_size,
        "source": str(path),
    }


__all__ = ["ARCHS", "PREPROCESS", "arch_of", "check_arch", "export_insightface", "facelab_state",
           "file_sha256", "guess_arch", "import_insightface", "insightface_name",
           "insightface_state", "name_table", "read_insightface"]
