"""What "auto" chose without native bf16 (facelab.recognize.runtime), kept per model and machine.

On a CPU without native bf16, "auto" exports the model to ONNX and times torch against onnxruntime:
8-13 s on 2 cores, mostly the exporter, at every `Recognizer.load` (every `facelab verify`). The
outcome depends on the network, the machine and the libraries, so it is kept under a key made of
all of them: the weights' digest (facelab.model.weights_digest), the crop size, torch's and
onnxruntime's versions, the CPU (model name and flags from /proc/cpuinfo), torch's kernel level and
the oneDNN cap from the environment, and the thread count. The record is a JSON file, plus the
checked ONNX export when onnxruntime won, in `$XDG_CACHE_HOME/facelab/runtime` (~/.cache when the
variable is unset). Nothing here is trusted blindly: a record that cannot be read or an export
that onnxruntime cannot open is ignored (and measured again); a cache that cannot be written is
skipped with a debug message.
"""

import hashlib
import importlib.metadata
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from facelab.io import write_atomic
from facelab.jsonfile import strict_json
from facelab.model import weights_digest

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "facelab" / "runtime"


def _cpu() -> str:
    """The model name and flags lines of /proc/cpuinfo ('' where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    wanted = [ln for ln in lines if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


def cache_key(model: nn.Module, input_size: tuple[int, int], digest: str | None = None) -> str:
    """The key of `model`'s record on this machine (module docstring); digest: the weights'
    weights_digest when the caller has it (hashing iresnet50's weights takes a fraction of a
    second), else computed here."""
    try:
        ort = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        ort = "none"
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    parts = [digest or weights_digest(model.state_dict()), str(tuple(input_size)),
             torch.__version__, ort, _cpu(), capability, os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
             os.environ.get("DNNL_MAX_CPU_ISA", ""), str(torch.get_num_threads())]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


def read(key: str) -> tuple[str, bytes | None] | None:
    """(choice, ONNX bytes or None) of a kept record, or None when there is none usable."""
    folder = cache_dir()
    try:
        record = json.loads((folder / f"{key}.json").read_text())
        choice = record["choice"]
        onnx = (folder / f"{key}.onnx").read_bytes() if record.get("onnx") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return choice, onnx


def write(key: str, choice: str, ms: dict[str, float], onnx: bytes | None) -> None:
    """Keep a choice (and the export onnxruntime runs); the export first, the record last."""
    folder = cache_dir()
    try:
        if onnx is not None:
            write_atomic(folder / f"{key}.onnx", lambda tmp: tmp.write_bytes(onnx))
        text = strict_json({"choice": choice, "ms": ms, "onnx": onnx is not None}, indent=None)
        write_atomic(folder / f"{key}.json", lambda tmp: tmp.write_text(text))
    except OSError as e:
        log.debug("%s: cannot keep auto's choice (%s)", folder, e)
