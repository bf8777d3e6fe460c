"""Face-embedding ONNX files of other tools made usable by facelab (`import_onnx`).

Another tool's file (an insightface recognition model, a converted checkpoint) holds the graph but
not what facelab needs to evaluate it: the aligned crop it takes and how its pixels are scaled. The
caller states that as a preprocessing record (facelab.data.transforms; PRESETS holds the documented
conventions); `import_onnx` inspects the graph's one image input and one output, adds facelab's
metadata (facelab.onnx_model, format version 2: the input layout and batch the graph takes besides
the fields of an export) and leaves the graph itself untouched. The result loads like a `facelab
export` file (facelab.model.load_model) and is checked before it is written: facelab's reader and
a plain onnxruntime session on the source file must give identical outputs on a seeded batch.
"""

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

import facelab
from facelab.align.template import template_for
from facelab.data.transforms import check_preprocess, to_input
from facelab.errors import FacelabError
from facelab.io import check_output_folder, write_atomic
from facelab.jsonfile import strict_json
from facelab.onnx_model import (
    FORMAT,
    IMPORT_FORMAT_VERSION,
    LAYOUTS,
    OnnxEmbedder,
    first_line,
    open_session,
    read_metadata,
    require,
)

log = logging.getLogger(__name__)

# Preprocessing conventions of other tools' models, stated where the tool documents them in code.
# insightface (python-package/insightface/model_zoo/arcface_onnx.py, ArcFaceONNX): crops by
# face_align.norm_crop (the ArcFace 112x112 template), fed through cv2.dnn.blobFromImages with
# swapRB=True (RGB) and (x - 127.5) / 127.5, i.e. (x/255 - 0.5) / 0.5; except the mxnet-converted
# models whose graph starts with Sub and Mul nodes (its own test: a node among the first 8 named
# Sub*/_minus* and one Mul*/_mul*), which normalise inside the graph and take raw pixel values
# 0..255: mean 0, std 1/255 here. Left out: FaceNet (facenet-pytorch InceptionResnetV1, 160 x 160,
# (x - 127.5) / 128): its crops are MTCNN boxes with a margin, not a landmark template facelab
# aligns to, so no record here would describe them.
PRESETS: dict[str, dict] = {
    "insightface": {"template": "arcface112", "size": 112, "colour": "RGB", "mean": 0.5,
                    "std": 0.5},
    "insightface-mxnet": {"template": "arcface112", "size": 112, "colour": "RGB", "mean": 0.0,
                          "std": 1 / 255},
}
CHECK_BATCH = 3  # images of the seeded check; > 1 proves a dynamic batch axis


def preset(name: str) -> dict:
    """A copy of PRESETS[name]; FacelabError listing the presets for an unknown name."""
    if name not in PRESETS:
        raise FacelabError(
            f"unknown preprocessing preset {name!r}; choose one of {sorted(PRESETS)}"
        )
    return dict(PRESETS[name])


def import_onnx(
    src: str | Path,
    out: str | Path,
    preprocess: dict,
    backbone: str | None = None,
    *,
    layout: str | None = None,
) -> dict:
    """Write `out` (a `.onnx` file, atomically): the face-embedding model `src` of another tool with
    facelab's metadata added, its graph unchanged.

    preprocess: the record the model expects (template, size, colour, mean, std; missing keys take
    facelab's defaults, PRESETS has known conventions). backbone: stored as the model's name
    ("imported" when None). layout: "NCHW" or "NHWC", only needed when the input's shape leaves it
    open (e.g. every axis symbolic); otherwise it is read from the axis of size 3.

    The graph must have one image input, float32 of rank 4 with 3 channels and the template's crop
    size (H, W), and one output [B, d]. Its batch axis is kept as it is: dynamic, or a fixed N that
    facelab's reader then fills in chunks. FacelabError naming `src` for a file that is not an ONNX
    model, already carries facelab's metadata, or does not fit; nothing is written then.

    Returns {"src", "out", "bytes", "input", "input_shape", "input_layout", "batch",
    "embedding_size", "preprocess", "checked_batch", "metadata"}.
    """
    src, out = Path(src), Path(out)
    if out.suffix.lower() != ".onnx":
        raise FacelabError(f"{out}: the imported model's file name must end in .onnx")
    if out.resolve() == src.resolve():
        raise FacelabError(f"{out}: is the source file itself; write the import to another file")
    if layout is not None and layout not in LAYOUTS:
        raise FacelabError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if backbone is not None and (not isinstance(backbone, str) or not backbone.strip()):
        raise FacelabError(f"backbone must be a non-empty name, got {backbone!r}")
    pre, (h, w) = _checked_preprocess(preprocess)
    check_output_folder(out.parent, f"folder of {out.name}")
    onnx = require("onnx")
    proto = _load(src, onnx)
    props = {p.key: p.value for p in proto.metadata_props}
    if "facelab_format" in props:
        raise FacelabError(f"{src}: already carries facelab metadata (facelab_format "
                           f"{props['facelab_format']!r}); load it as it is, no import needed")
    name, dims = _image_input(proto, src)
    layout = _pick_layout(dims, (h, w), pre, name, src, layout)
    batch: str | int = dims[0] if isinstance(dims[0], int) else "dynamic"
    _check_output(proto, src)

    # seeded uint8 crops through facelab's own preprocessing: float32 [B, 3, H, W]
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (CHECK_BATCH, 3, h, w), dtype=np.uint8))
    x = to_input(images, pre)
    feed = x.numpy() if layout == "NCHW" else x.numpy().transpose(0, 2, 3, 1)  # graph's layout
    feed = np.ascontiguousarray(feed, dtype=np.float32)
    original = _session(str(src), src)
    ref, batch = _original_outputs(original, name, feed, batch, src)  # [B, d]

    meta = {
        "facelab_format": FORMAT,
        "facelab_format_version": str(IMPORT_FORMAT_VERSION),
        "facelab_version": facelab.__version__,
        "preprocess": strict_json(pre, indent=None),
        "embedding_size": str(ref.shape[1]),
        "backbone": backbone or "imported",
        "input_layout": layout,
        "batch": str(batch),
        "imported_from": strict_json({"path": str(src.resolve()), "sha256": _sha256(src)},
                                     indent=None),
    }
    onnx.helper.set_model_props(proto, {**props, **meta})  # the source's own fields kept
    try:
        data = proto.SerializeToString()
    except Exception as e:  # noqa: BLE001 - protobuf's 2 GB limit (ValueError or EncodeError)
        raise FacelabError(f"{src}: cannot be written as one file ({first_line(e)})") from None
    # facelab's reader on the new file (as load_onnx builds it) against the original, same inputs
    embedder = OnnxEmbedder(out, _session(data, out), read_metadata({**props, **meta}, out))
    got = embedder(x).numpy()  # [B, d]
    if got.shape != ref.shape or not np.array_equal(got, ref):
        diff = np.abs(got - ref).max() if got.shape == ref.shape else float("nan")
        raise FacelabError(f"{src}: facelab's reader of the import gives {got.shape} outputs "
                           f"differing from the original's {ref.shape} by {diff:.2e} on the same "
                           f"batch; nothing written to {out}")
    try:
        write_atomic(out, lambda tmp: tmp.write_bytes(data))
    except OSError as e:
        raise FacelabError(f"{out}: cannot write ({e.strerror or e})") from None
    log.info("imported %s to %s: input %r %s (%s, batch %s), embeddings of %d, preprocess %s",
             src, out, name, _shape_text(dims), layout, batch, ref.shape[1], meta["preprocess"])
    return {
        "src": str(src),
        "out": str(out),
        "bytes": len(data),
        "input": name,
        "input_shape": [d if isinstance(d, int) else str(d) for d in dims],
        "input_layout": layout,
        "batch": batch,
        "embedding_size": int(ref.shape[1]),
        "preprocess": pre,
        "checked_batch": CHECK_BATCH,
        "metadata": meta,
    }


def _checked_preprocess(preprocess: dict) -> tuple[dict, tuple[int, int]]:
    """(the record completed by check_preprocess, crop (H, W) of its template and size)."""
    if not isinstance(preprocess, dict):
        raise FacelabError(f"preprocess must be a dict (a preprocessing record or a preset's), got "
                           f"{type(preprocess).__name__}")
    pre = check_preprocess(preprocess)
    size = pre["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise FacelabError(f"preprocess.size must be a positive integer, got {size!r}")
    _, (w, h) = template_for(pre["template"], size)
    return pre, (h, w)


def _load(src: Path, onnx: object) -> object:
    """The ModelProto of `src` (external weights included); FacelabError when it is none."""
    if not src.is_file():
        raise FacelabError(f"{src}: no such file")
    try:
        proto = onnx.load(str(src))
    except OSError as e:
        raise FacelabError(f"{src}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and onnx's own types
        raise FacelabError(
            f"{src}: not an ONNX model ({type(e).__name__}: {first_line(e)})"
        ) from None
    if proto.ir_version < 1 or not proto.graph.output:  # e.g. an empty file parses as a model
        raise FacelabError(f"{src}: not an ONNX model (no IR version or no graph output)")
    return proto


def _dims(value_info: object) -> list[int | str] | None:
    """The declared shape of a graph input/output: an int per fixed axis, the symbol (or "?") per
    dynamic one; None when the rank itself is unknown."""
    tensor = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.dim_value > 0 else (d.dim_param or "?") for d in tensor.shape.dim]


def _shape_text(dims: list[int | str] | None) -> str:
    return "of unknown rank" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"


def _image_input(proto: object, src: Path) -> tuple[str, list[int | str]]:
    """(name, dims) of the graph's one image input: float32, rank 4. Initializers that old
    exporters also list as inputs (weights) do not count."""
    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs)
        raise FacelabError(f"{src}: the graph has {len(inputs)} inputs ({names}); facelab feeds "
                           "one, the image batch")
    value = inputs[0]
    dims = _dims(value)
    elem = value.type.tensor_type.elem_type
    if elem != 1:  # TensorProto.FLOAT
        raise FacelabError(f"{src}: input {value.name!r} has element type {_type_name(elem)}; "
                           "facelab feeds float32")
    if dims is None or len(dims) != 4:
        raise FacelabError(f"{src}: input {value.name!r} has shape {_shape_text(dims)}; expected "
                           "an image batch of rank 4, [B, 3, H, W] or [B, H, W, 3]")
    return value.name, dims


def _type_name(elem: int) -> str:
    try:
        return require("onnx").helper.tensor_dtype_to_np_dtype(elem).name
    except Exception:  # noqa: BLE001 - an undefined or non-numpy type
        return f"#{elem}"


def _pick_layout(dims: list[int | str], size: tuple[int, int], pre: dict, name: str, src: Path,
                 given: str | None) -> str:
    """NCHW or NHWC: the layout whose channel axis is 3 and whose spatial axes are the crop's
    (H, W) (a symbolic axis fits anything). `given` settles a shape that fits both."""
    h, w = size
    axes = {"NCHW": (1, 2, 3), "NHWC": (3, 1, 2)}  # channel, height, width axis

    def fits(layout: str, exact_channels: bool) -> bool:
        c, y, x = (dims[a] for a in axes[layout])
        symbolic = [isinstance(v, str) for v in (c, y, x)]
        return ((c == 3 or (symbolic[0] and not exact_channels))
                and (y == h or symbolic[1]) and (x == w or symbolic[2]))

    fitting = [lay for lay in LAYOUTS if fits(lay, exact_channels=False)]
    if len(fitting) > 1:  # a fixed 3 beats a symbolic channel axis
        fitting = [lay for lay in fitting if fits(lay, exact_channels=True)] or fitting
    want = (f"[B, 3, {h}, {w}] (NCHW) or [B, {h}, {w}, 3] (NHWC) for preprocess template "
            f"{pre['template']!r} size {pre['size']}")
    if given is not None:
        if given not in fitting:
            raise FacelabError(f"{src}: input {name!r} has shape {_shape_text(dims)}, which is not "
                               f"layout {given}; expected {want}")
        return given
    if not fitting:
        raise FacelabError(f"{src}: input {name!r} has shape {_shape_text(dims)}; expected {want}")
    if len(fitting) > 1:
        raise FacelabError(f"{src}: input {name!r} has shape {_shape_text(dims)}, which fits both "
                           "NCHW and NHWC; state the layout (layout='NCHW' or 'NHWC')")
    return fitting[0]


def _check_output(proto: object, src: Path) -> None:
    """One graph output, [B, d] where its rank is declared."""
    outputs = proto.graph.output
    if len(outputs) != 1:
        names = ", ".join(repr(o.name) for o in outputs)
        raise FacelabError(f"{src}: the graph has {len(outputs)} outputs ({names}); expected one, "
                           "the embeddings [B, d]")
    dims = _dims(outputs[0])
    if dims is not None and len(dims) != 2:
        raise FacelabError(f"{src}: output {outputs[0].name!r} has shape {_shape_text(dims)}; "
                           "expected embeddings [B, d]")


def _session(source: str | bytes, where: Path) -> object:
    """open_session on a file or serialised model; FacelabError naming `where` if it fails."""
    try:
        return open_session(source)
    except FacelabError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime's own types
        raise FacelabError(f"{where}: onnxruntime cannot load the model "
                           f"({type(e).__name__}: {first_line(e)})") from None


def _run_chunks(session: object, name: str, feed: np.ndarray, batch: str | int) -> np.ndarray:
    """The original graph's output on `feed` (in its layout), fed as OnnxEmbedder feeds it: whole
    with a dynamic batch; else in chunks of the fixed batch N, the last padded with zero images
    whose rows are dropped. Raises onnxruntime's own errors."""
    if batch == "dynamic":
        return np.asarray(session.run(None, {name: feed})[0])
    rows = []
    for start in range(0, len(feed), batch):
        chunk = feed[start : start + batch]  # [n, ...]
        pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)
        rows.append(np.asarray(session.run(None, {name: np.concatenate([chunk, pad])})[0])[
            : len(chunk)])
    return np.concatenate(rows)


def _original_outputs(session: object, name: str, feed: np.ndarray, batch: str | int,
                      src: Path) -> tuple[np.ndarray, str | int]:
    """(the source graph's outputs float32 [B, d] on `feed`, the batch it takes). A graph that
    declares a dynamic batch axis but fails on B > 1 images at once, or returns other than B rows,
    while it runs them one at a time, takes batch 1 (a common export bug: a reshape to [1, ...])."""
    def run(b: str | int) -> np.ndarray:
        try:
            out = _run_chunks(session, name, feed, b)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own types
            raise FacelabError(f"{src}: onnxruntime cannot run it on {len(feed)} images of shape "
                               f"{list(feed.shape[1:])} ({type(e).__name__}: {first_line(e)})"
                               ) from None
        if out.ndim != 2 or len(out) != len(feed):
            raise FacelabError(f"{src}: its output has shape {list(out.shape)} for "
                               f"{len(feed)} images; expected embeddings [{len(feed)}, d]")
        return out

    try:
        out = run(batch)
    except FacelabError as first:
        if batch != "dynamic":
            raise
        try:
            out, batch = run(1), 1
        except FacelabError:
            raise first from None
        log.warning("%s: its batch axis is declared dynamic but it embeds one image at a time "
                    "only (%s); stored as batch 1", src, first)
    if not np.isfinite(out).all():
        raise FacelabError(f"{src}: its output on a random batch holds NaN or infinite values")
    return out.astype(np.float32, copy=False), batch


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
