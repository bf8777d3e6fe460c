"""Exported facelab models read back: an ONNX file from `facelab export` as an embedding network.

`load_onnx` opens the file in an onnxruntime CPU session (onnxruntime is an optional dependency,
imported when first needed) and checks the metadata `facelab export` writes (facelab_format,
facelab_format_version, preprocess, embedding_size), so a model evaluates and checks its data
exactly as a checkpoint does.
"""

import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from facelab.data.transforms import check_preprocess
from facelab.errors import FacelabError

FORMAT = "facelab-onnx"
FORMAT_VERSION = 1
INSTALL = "pip install 'facelab[export]'"


def require(module: str) -> ModuleType:
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise FacelabError(
            f"{module} is not installed; ONNX export and exported models need it: {INSTALL}"
        ) from None


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def open_session(source: str | bytes, spin: bool = True) -> object:
    """A CPU onnxruntime session on a file path or serialised model, using as many threads as torch
    does. spin False: its threads sleep as soon as a call ends instead of spinning for work (about
    40 ms), which would take the cores from torch code running between calls (a detector)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # OMP_NUM_THREADS / torch.set_num_threads rule both
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


class OnnxEmbedder(nn.Module):
    """An exported model as an embedding network for evaluation: images float32 [B, 3, H, W]
    (preprocessed as `metadata["preprocess"]` says) -> raw embeddings float32 [B, d], through an
    onnxruntime CPU session. No parameters and no autograd: evaluation only."""

    def __init__(self, path: Path, session: object, metadata: dict) -> None:
        super().__init__()
        self.path, self.session, self.metadata = Path(path), session, metadata
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)  # [B, 3, H, W]
        try:
            out = self.session.run(None, {self.input_name: feed})[0]  # [B, d]
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
            raise FacelabError(
                f"{self.path}: onnxruntime cannot embed a batch of shape {tuple(x.shape)} "
                f"({type(e).__name__}: {first_line(e)})"
            ) from None
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.path}, backbone={self.metadata.get('backbone')!r}"


def read_metadata(props: dict[str, str], where: str | Path) -> dict:
    """Checked facelab metadata of an exported model: every field as stored, `preprocess` parsed (a
    dict) and `embedding_size` an int. FacelabError naming `where` and the field for anything
    missing or foreign."""
    fmt = props.get("facelab_format")
    if fmt is None:
        raise FacelabError(f"{where}: not a facelab export (no metadata field 'facelab_format'); "
                           "make one with `facelab export RUN --out FILE.onnx`")
    if fmt != FORMAT:
        raise FacelabError(f"{where}: metadata facelab_format is {fmt!r}, expected {FORMAT!r}")
    version = props.get("facelab_format_version", "")
    if not version.isdigit() or not 1 <= int(version) <= FORMAT_VERSION:
        raise FacelabError(f"{where}: metadata facelab_format_version is {version!r}; this facelab "
                           f"reads versions 1..{FORMAT_VERSION}")
    preprocess = _read_preprocess(props, where)
    size = props.get("embedding_size", "")
    if not size.isdigit() or int(size) < 1:
        raise FacelabError(
            f"{where}: metadata field 'embedding_size' must be a positive integer, got {size!r}"
        )
    return {**props, "preprocess": preprocess, "embedding_size": int(size)}


def _read_preprocess(props: dict[str, str], where: str | Path) -> dict:
    """The `preprocess` metadata field as a checked record (a dict)."""
    if "preprocess" not in props:
        raise FacelabError(f"{where}: metadata field 'preprocess' is missing")
    try:
        preprocess = json.loads(props["preprocess"])
        if not isinstance(preprocess, dict):
            raise FacelabError(f"expected a JSON object, got {type(preprocess).__name__}")
        check_preprocess(preprocess)
    except (json.JSONDecodeError, FacelabError) as e:
        why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        msg = f"{where}: metadata field 'preprocess' is not a valid preprocessing record ({why})"
        raise FacelabError(msg) from None
    return preprocess


def load_onnx(path: str | Path, spin: bool = True) -> tuple[OnnxEmbedder, dict]:
    """(OnnxEmbedder, preprocess record) of a `facelab export` file; what `facelab.model.load_model`
    returns for a `.onnx` path. spin: see open_session."""
    path = Path(path)
    try:
        session = open_session(str(path), spin)
    except FacelabError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
        raise FacelabError(
            f"{path}: not a readable ONNX model ({type(e).__name__}: {first_line(e)})"
        ) from None
    meta = read_metadata(dict(session.get_modelmeta().custom_metadata_map), path)
    return OnnxEmbedder(path, session, meta), meta["preprocess"]
