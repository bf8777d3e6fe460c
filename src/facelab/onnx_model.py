"""Exported facelab models read back: an ONNX file from `facelab export` as an embedding network.

`load_onnx` opens the file in an onnxruntime CPU session (onnxruntime is an optional dependency,
imported when first needed) and checks the metadata `facelab export` writes (facelab_format,
facelab_format_version, preprocess, embedding_size), so a model evaluates and checks its data
exactly as a checkpoint does.

Format versions. 1: what `facelab export` writes, the graph takes float32 [B, 3, H, W] (NCHW) with
B dynamic. 2 (files made by facelab.interop.onnx_import from another tool's model) may add
input_layout ("NCHW" or "NHWC": the graph's image input is [B, H, W, 3], so OnnxEmbedder transposes
before running it), batch ("dynamic" or a fixed positive integer N: the graph takes exactly N
images; OnnxEmbedder runs chunks of N, the last one padded with zero images whose outputs it
drops) and imported_from (JSON {"path", "sha256"} of the source file). A file without them reads
as version 1 does. Exports stay version 1, so any facelab that reads ONNX reads them; a facelab
older than version 2 refuses an imported file instead of feeding it the wrong layout.
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
FORMAT_VERSION = 1  # written by `facelab export` (NCHW, dynamic batch): no field of version 2
IMPORT_FORMAT_VERSION = 2  # input_layout, batch, imported_from (facelab.interop.onnx_import)
NEWEST_FORMAT_VERSION = IMPORT_FORMAT_VERSION  # this facelab reads versions 1..NEWEST
LAYOUTS = ("NCHW", "NHWC")
V2_FIELDS = ("input_layout", "batch", "imported_from")
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
    onnxruntime CPU session. No parameters and no autograd: evaluation only.

    metadata "input_layout" NHWC: the graph gets [B, H, W, 3]; "batch" N (an int): the graph gets
    chunks of exactly N images, the last one padded with zero images whose outputs are dropped.
    Without them (a version 1 export, an in-memory export): NCHW, dynamic batch."""

    def __init__(self, path: Path, session: object, metadata: dict) -> None:
        super().__init__()
        self.path, self.session, self.metadata = Path(path), session, metadata
        self.input_name = session.get_inputs()[0].name
        self.layout = metadata.get("input_layout", "NCHW")
        self.batch = metadata.get("batch", "dynamic")  # "dynamic" or a positive int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)  # [B, 3, H, W]
        if self.layout == "NHWC":
            feed = np.ascontiguousarray(feed.transpose(0, 2, 3, 1))  # [B, H, W, 3]
        if self.batch == "dynamic":
            out = self._run(feed, x.shape)  # [B, d]
        else:
            outs = []
            for start in range(0, len(feed), self.batch):
                chunk = feed[start : start + self.batch]  # [n, ...], n <= N
                n = len(chunk)
                if n < self.batch:  # [N, ...]: zero images after the last real one
                    pad = np.zeros((self.batch - n, *chunk.shape[1:]), np.float32)
                    chunk = np.concatenate([chunk, pad])
                outs.append(np.asarray(self._run(chunk, x.shape))[:n])  # [n, d]
            empty = np.zeros((0, int(self.metadata.get("embedding_size", 0))), np.float32)
            out = np.concatenate(outs) if outs else empty  # [B, d]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def _run(self, feed: np.ndarray, shape: torch.Size) -> np.ndarray:
        """The graph's first output on `feed` (already in its layout and batch); FacelabError
        naming the file and the batch's shape as given to forward."""
        try:
            return self.session.run(None, {self.input_name: feed})[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
            raise FacelabError(
                f"{self.path}: onnxruntime cannot embed a batch of shape {tuple(shape)} "
                f"({type(e).__name__}: {first_line(e)})"
            ) from None

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
    if not version.isdigit() or not 1 <= int(version) <= NEWEST_FORMAT_VERSION:
        raise FacelabError(f"{where}: metadata facelab_format_version is {version!r}; this facelab "
                           f"reads versions 1..{NEWEST_FORMAT_VERSION}")
    if int(version) < IMPORT_FORMAT_VERSION:
        newer = [k for k in V2_FIELDS if k in props]
        if newer:  # a facelab that reads only version 1 would ignore them and misread the file
            raise FacelabError(f"{where}: metadata field {newer[0]!r} needs "
                               f"facelab_format_version {IMPORT_FORMAT_VERSION}, the file says "
                               f"{version!r}")
    preprocess = _read_preprocess(props, where)
    size = props.get("embedding_size", "")
    if not size.isdigit() or int(size) < 1:
        raise FacelabError(
            f"{where}: metadata field 'embedding_size' must be a positive integer, got {size!r}"
        )
    layout = props.get("input_layout", "NCHW")
    if layout not in LAYOUTS:
        raise FacelabError(f"{where}: metadata field 'input_layout' must be one of "
                           f"{', '.join(LAYOUTS)}, got {layout!r}")
    batch = props.get("batch", "dynamic")
    if batch != "dynamic" and not (batch.isascii() and batch.isdigit() and int(batch) >= 1):
        raise FacelabError(f"{where}: metadata field 'batch' must be 'dynamic' or a positive "
                           f"integer, got {batch!r}")
    meta = {**props, "preprocess": preprocess, "embedding_size": int(size), "input_layout": layout,
            "batch": batch if batch == "dynamic" else int(batch)}
    if "imported_from" in props:
        meta["imported_from"] = _read_imported_from(props["imported_from"], where)
    return meta


def _read_imported_from(text: str, where: str | Path) -> dict:
    """The `imported_from` metadata field: {"path": source file, "sha256": its digest}."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"{where}: metadata field 'imported_from' is not JSON ({e.msg})"
        raise FacelabError(msg) from None
    if not (isinstance(record, dict) and isinstance(record.get("path"), str)
            and isinstance(record.get("sha256"), str)):
        raise FacelabError(f"{where}: metadata field 'imported_from' must be a JSON object with "
                           f"string fields 'path' and 'sha256', got {text[:200]!r}")
    return record


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
