"""ONNX export of the embedding network (`facelab export`), checked against torch before writing.

The graph takes "images", float32 [B, 3, H, W] with B dynamic, preprocessed exactly as evaluation
feeds the torch model (`facelab.data.transforms.to_input` with the model's `preprocess` record): RGB
uint8 crops, channels reversed when the model was trained on BGR, then x / 255 and (x - mean) / std.
It returns "embeddings", float32 [B, d], raw (not L2-normalised) like the torch model; evaluation
adds the flipped crop's embedding and normalises (facelab.eval.embed). H x W is the alignment
template's crop at the recorded size (112 x 112 for arcface112).

Metadata (ONNX metadata_props, strings): facelab_format "facelab-onnx", facelab_format_version,
facelab_version, preprocess (JSON, the checkpoint's record completed with the defaults, so a reader
needs no facelab), embedding_size, backbone, groupface_groups, source_checkpoint, source_step,
weights_sha256 (facelab.model.weights_digest of the weights) and, when the run stored them,
thresholds (JSON, the deployed operating points per validation set, eval/protocols/thresholds.py).
facelab.onnx_model reads an export back and refuses a file without the required ones.

Every export is checked before it is written: onnxruntime and torch embed seeded random batches of
2 and 3 (the second proves the dynamic batch axis); the largest difference of the L2-normalised
embeddings must stay within TOLERANCE, else nothing is written. The exporter is torch's
torch.export-based one (`dynamo=True`, needs onnxscript), not the deprecated TorchScript one.
"""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

import facelab
from facelab.align.template import template_for
from facelab.data.transforms import check_preprocess
from facelab.errors import FacelabError
from facelab.io import check_output_folder, write_atomic
from facelab.jsonfile import strict_json
from facelab.model import (
    load_checkpoint,
    model_from_checkpoint,
    resolve_checkpoint,
    weights_digest,
)
from facelab.onnx_model import FORMAT, FORMAT_VERSION, first_line, open_session, require

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max |torch - onnxruntime| of L2-normalised embeddings, float32
INPUT, OUTPUT = "images", "embeddings"


def _input_size(preprocess: dict) -> tuple[int, int]:
    """(H, W) of the aligned crops the model was trained on."""
    _, (w, h) = template_for(preprocess["template"], int(preprocess["size"]))
    return h, w


def _metadata(ckpt: dict, path: Path, preprocess: dict) -> dict[str, str]:
    model_cfg = ckpt["config"].get("model", {})
    return {
        "facelab_format": FORMAT,
        "facelab_format_version": str(FORMAT_VERSION),
        "facelab_version": facelab.__version__,
        "preprocess": strict_json(preprocess, indent=None),
        "embedding_size": str(model_cfg.get("embedding_size", "")),
        "backbone": str(model_cfg.get("backbone", "")),
        "groupface_groups": str(model_cfg.get("groupface", {}).get("groups", 0)),
        "source_checkpoint": str(path.resolve()),
        "source_step": str(ckpt.get("step", "")),
        "weights_sha256": weights_digest(ckpt["model"]),
        **({"thresholds": strict_json(ckpt["thresholds"], indent=None)}
           if ckpt.get("thresholds") else {}),
    }


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hold back the exporter's INFO chatter (onnxscript's optimiser passes, torchvision op
    registration) and its deprecation warnings about torch internals, so `facelab export` logs only
    its own result."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def to_onnx(model: nn.Module, size: tuple[int, int], opset: int | None, name: str) -> object:
    """The ONNX ModelProto of `model` on [B, 3, H, W] (B dynamic); FacelabError naming the model if
    it fails."""
    require("onnxscript")  # torch's exporter imports it itself, with a less helpful message
    example = torch.zeros(2, 3, *size)  # [2, 3, H, W]
    batch = torch.export.Dim("batch")
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
            )
        return program.model_proto
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; one message for all
        raise FacelabError(
            f"{name}: cannot be exported to ONNX{'' if opset is None else f' opset {opset}'} "
            f"({type(e).__name__}: {first_line(e)})"
        ) from None


def max_difference(model: nn.Module, session: object, size: tuple[int, int]) -> float:
    """Largest |torch - onnxruntime| of L2-normalised embeddings on seeded random batches of
    2 and 3."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in (2, 3):  # 3 differs from the export example's batch: the axis must be dynamic
        # [B, 3, H, W] in the range of normalised pixels
        x = torch.rand(batch, 3, *size, generator=gen) * 2 - 1
        with torch.no_grad():
            ref = model(x)  # [B, d]
        got = torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])  # [B, d]
        if got.shape != ref.shape:
            raise FacelabError(
                f"ONNX export check: onnxruntime gave {tuple(got.shape)}, torch {tuple(ref.shape)}"
            )
        unit_got = nn.functional.normalize(got, dim=1)
        unit_ref = nn.functional.normalize(ref, dim=1)
        diff = (unit_got - unit_ref).abs().max()
        worst = max(worst, float(diff))
    return worst


def export_onnx(run_or_checkpoint: str | Path, out: str | Path, opset: int | None = None) -> dict:
    """Export a run's embedding network to `out` (a `.onnx` file, written atomically) after checking
    it.

    opset: ONNX opset (None: the exporter's default). Returns {"out", "bytes", "opset",
    "max_abs_diff", "tolerance", "metadata"}; raises FacelabError, writing nothing, when the export
    fails or onnxruntime and torch disagree by more than TOLERANCE. The output's folder is proven
    writable first, before the checkpoint is read.
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise FacelabError(f"{out}: the exported model's file name must end in .onnx")
    check_output_folder(out.parent, f"folder of {out.name}")  # before the minutes of work
    require("onnx")
    path = resolve_checkpoint(run_or_checkpoint)
    ckpt = load_checkpoint(path)
    # the same network and record `load_model` gives
    model, preprocess = model_from_checkpoint(ckpt)
    preprocess = check_preprocess(preprocess)
    meta = _metadata(ckpt, path, preprocess)
    size = _input_size(preprocess)
    name = f"backbone {meta['backbone']!r}" + (
        " with GroupFace" if meta["groupface_groups"] != "0" else ""
    )
    proto = to_onnx(model, size, opset, name)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    # the exporter falls back to its own opset when it cannot convert
    if opset is not None and opset_used != opset:
        raise FacelabError(
            f"opset {opset}: the exporter cannot write {name} in it (it gave opset {opset_used}); "
            "leave --opset out for the exporter's default"
        )
    require("onnx").helper.set_model_props(proto, meta)
    data = proto.SerializeToString()
    diff = max_difference(model, open_session(data), size)
    if not diff <= TOLERANCE:  # NaN refused too
        raise FacelabError(
            f"{name}: the ONNX export differs from the torch model by {diff:.2e} "
            f"(L2-normalised embeddings, tolerance {TOLERANCE:.0e}); nothing written to {out}"
        )
    try:
        write_atomic(out, lambda tmp: tmp.write_bytes(data))
    except OSError as e:
        raise FacelabError(f"{out}: cannot write ({e.strerror or e})") from None
    log.info(
        "exported %s to %s (%.1f MB, opset %s); torch vs onnxruntime: max |diff| %.2e of "
        "L2-normalised embeddings (tolerance %.0e)",
        name,
        out,
        len(data) / 1e6,
        opset_used,
        diff,
        TOLERANCE,
    )
    return {
        "out": str(out),
        "bytes": len(data),
        "opset": opset_used,
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "metadata": meta,
    }


