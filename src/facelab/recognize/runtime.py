"""The fast CPU embedding path: face crops float32 [B, 3, H, W] -> raw embeddings float32 [B, d].

`prepare(model, precision)` returns a module that embeds what the model embeds (it can be given
straight to facelab.eval.embed.embed_images) and the precision it runs in:

- "bf16": a copy of the model with every BatchNorm that follows a convolution folded into it (in
  float32, before any rounding), the weights of convolutions, linear layers and PReLUs stored in
  bfloat16, channels_last weights and input, run under `torch.autocast("cpu", dtype=bfloat16)`;
  the output is cast back to float32. Only worth it where the CPU computes bf16 natively
  (`native_bf16`: AVX512-BF16 or AMX-BF16): measured on a 2-core AVX512-BF16 CPU, 3.1x
  onnxruntime fp32 for mobilefacenet and 2.0-2.2x for iresnet50 at batch 32, 1.2-1.75x and 1.4x
  at batch 1. Without native bf16 oneDNN emulates it, about 10x slower than float32.
- "fp32": a copy in float32 with the same BatchNorm folding and channels_last, plain eager torch.
  Measured against the plain model: mobilefacenet 1.3-1.8x faster (its depthwise convolutions
  gain most from channels_last), iresnet50 1.2-1.4x at batch 32 and within the noise at batch 1
  (0.93-1.07x).
- "onnxruntime-fp32": an onnxruntime CPU session. An `OnnxEmbedder` (an exported `.onnx` model)
  passes through unchanged; "auto" can also pick it for a torch model (below).

"auto" is "bf16" when `native_bf16()`. Otherwise it is the faster of the two float32 paths, timed
on this machine when the model is prepared (a batch of 4): torch "fp32", and, when onnxruntime,
onnx and onnxscript are installed, the model exported in memory by facelab's exporter
(facelab.export, checked against torch to its TOLERANCE) and run by onnxruntime. Why timed and
not fixed: with torch held to AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) the torch
"fp32" path ran mobilefacenet at 1.0-1.5x onnxruntime's speed but iresnet50 at 0.66-0.82x, so
neither is the faster for every model (docs/performance.md, "Embedding a face on CPU"). The export
and the timing cost seconds (about 8 s for mobilefacenet, 13 s for iresnet50 on 2 cores, most of
it the exporter), paid only on CPUs without native bf16 and once per model and machine: the choice,
and the export when onnxruntime won, are kept for the next load (runtime_cache). "fp32" skips them.

The caller's module is never changed: `prepare` works on a deep copy. It does change one process
setting: it flushes denormal floats to zero (see `prepare`).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from facelab.errors import FacelabError
from facelab.export import TOLERANCE, max_difference, to_onnx
from facelab.onnx_model import OnnxEmbedder, first_line, open_session
from facelab.recognize import runtime_cache

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
BF16, FP32, ONNXRUNTIME_FP32 = "bf16", "fp32", "onnxruntime-fp32"  # what `prepare` reports

# oneDNN CPU ISA caps (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA, lower-cased) below AVX512_CORE_BF16,
# the first level with bf16 dot products: under one of these oneDNN emulates bf16 in float32.
_ONEDNN_NO_BF16 = {"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core",
                   "avx512_core_vnni"}
_X86 = {"x86_64", "amd64", "i386", "i686"}
_CONV_BN = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
# layers whose weights the bf16 path stores in bf16: those autocast runs in bf16 on the CPU
_BF16_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.PReLU)
_PROBE_BATCH, _PROBE_ROUNDS = 4, 2  # the timing behind "auto" without native bf16
SWITCH_S = 0.1  # untimed calls after switching paths (see _median_seconds)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def _torch_query(name: str) -> bool | None:
    """torch.cpu.<name>() (a cpuinfo query of the hardware), or None where this torch lacks it."""
    query = getattr(torch.cpu, name, None)
    try:
        return bool(query()) if query is not None else None
    except RuntimeError:
        return None


def _isa_cap() -> str | None:
    """Why bf16 is not native in this process although the hardware may have it: the user held
    ATen or oneDNN below AVX-512 BF16 (e.g. ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 to
    emulate an older CPU); None when nothing is capped."""
    get_capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
    if get_capability is not None:
        aten = get_capability()  # "DEFAULT", "AVX2", "AVX512" on x86 (AMX machines too)
    else:
        aten = os.environ.get("ATEN_CPU_CAPABILITY", "AVX512").upper()
    if not aten.upper().startswith("AVX512"):
        return f"torch's CPU kernels run at {aten} (ATEN_CPU_CAPABILITY)"
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # oneDNN reads ONEDNN_ first
        value = os.environ.get(var, "").strip()
        if value:
            if value.lower() in _ONEDNN_NO_BF16:
                return f"{var}={value}"
            break
    try:
        # torch's own check: oneDNN's effective ISA (it honours ONEDNN_MAX_CPU_ISA) can run bf16
        bf16_kernels = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if not torch.backends.mkldnn.is_available() or not bf16_kernels:
            return "torch's oneDNN has no bf16 kernels here"
    except (AttributeError, RuntimeError):
        return "this torch cannot say whether oneDNN runs bf16"
    return None


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively for torch: AVX512-BF16 or AMX-BF16 in the hardware,
    and neither torch's ATen kernels nor oneDNN held below that by the environment.

    Why it matters: with native bf16 dot products a convolution runs about twice as fast as in
    float32; without them oneDNN converts to float32 and back around every operation, slower than
    float32 itself. The hardware is read through torch's own cpuinfo queries
    (torch.cpu._is_avx512_bf16_supported, _is_amx_tile_supported), else /proc/cpuinfo flags; the
    caps through torch.backends.cpu.get_cpu_capability(), ONEDNN_MAX_CPU_ISA and
    torch.ops.mkldnn._is_mkldnn_bf16_supported(). False on non-x86 CPUs (untested there).
    """
    if platform.machine().lower() not in _X86:
        return False
    avx512_bf16 = _torch_query("_is_avx512_bf16_supported")
    amx = _torch_query("_is_amx_tile_supported")
    if avx512_bf16 is None and amx is None:  # an older torch: the kernel's flags instead
        flags = cpu_flags()
        avx512_bf16, amx = "avx512_bf16" in flags, "amx_bf16" in flags
    if not (avx512_bf16 or amx):
        return False
    return _isa_cap() is None


def _fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution in an nn.Sequential into that
    convolution (in place, float32, eval mode); the BatchNorm becomes an nn.Identity. Returns how
    many were folded.

    Only plain nn.Sequential containers are read, where the order of the children is the data flow;
    a BatchNorm anywhere else (before a convolution, as in IResNet's units, or used by a custom
    forward) stays as it is. Saves one pass over each activation map and, in bf16, one rounding.
    """
    folded = 0
    for seq in model.modules():
        if type(seq) is not nn.Sequential:  # subclasses may reorder their children in forward()
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if (
                type(conv) in _CONV_BN
                and type(bn) is _CONV_BN[type(conv)]
                and bn.track_running_stats
                and bn.running_mean is not None
                and bn.num_features == conv.out_channels
            ):
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded


def _float32(out: object) -> object:
    """The model's output with every floating tensor as float32 (a tuple or list kept as one)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_float32(o) for o in out)
    return out


class CpuEmbedder(nn.Module):
    """A prepared copy of an embedding network on the CPU: images float32 [B, 3, H, W] -> what the
    network returns (raw embeddings [B, d]) in float32. Built by `prepare`; inference only (no
    autograd), `precision` says which path ("bf16" or "fp32")."""

    def __init__(self, net: nn.Module, precision: str) -> None:
        super().__init__()
        self.net, self.precision = net, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # [B, 3, H, W], NHWC in memory
        with torch.no_grad():
            if self.precision == BF16:
                # conv / linear / matmul / prelu in bf16 (their float32 inputs cast by autocast);
                # BatchNorm and the rest in the dtype they are given
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return _float32(self.net(x))  # [B, d]
            return _float32(self.net(x))  # [B, d]

    def extra_repr(self) -> str:
        return f"precision={self.precision!r}"


def _copy_for_cpu(model: nn.Module, precision: str) -> CpuEmbedder:
    """A deep copy of `model` on the CPU in eval mode, BatchNorm folded, channels_last; for "bf16"
    the weights of the layers autocast runs in bf16 (conv, linear, PReLU) stored in bf16, so that
    autocast has nothing to cast at each call. The caller's module is untouched."""
    net = copy.deepcopy(model).to("cpu").eval()
    net.requires_grad_(False)
    folded = _fold_batchnorm(net)
    if precision == BF16:
        for m in net.modules():
            if isinstance(m, _BF16_LAYERS):
                m.to(torch.bfloat16)
    net = net.to(memory_format=torch.channels_last)  # 4-d weights only
    log.debug("%s path: %d BatchNorm layers folded into their convolutions", precision, folded)
    return CpuEmbedder(net, precision)


def onnx_export(model: nn.Module, input_size: tuple[int, int] = (112, 112)) -> bytes:
    """`model` exported to ONNX in memory by facelab's exporter (facelab.export), serialised.

    Checked as `facelab export` checks a file: torch and onnxruntime embed seeded random batches
    and their L2-normalised embeddings must agree to facelab.export.TOLERANCE; FacelabError when the
    export fails, the packages are missing or the check fails. `model` is exported from a copy.
    """
    net = copy.deepcopy(model).to("cpu").eval()
    name = type(model).__name__
    data = to_onnx(net, tuple(input_size), None, name).SerializeToString()  # FacelabError if not
    try:
        diff = max_difference(net, open_session(data), tuple(input_size))
    except FacelabError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise FacelabError(f"{name}: onnxruntime cannot run the in-memory ONNX export "
                           f"({type(e).__name__}: {first_line(e)})") from None
    if not diff <= TOLERANCE:  # NaN refused too
        raise FacelabError(f"{name}: the in-memory ONNX export differs from the torch model by "
                           f"{diff:.2e} (L2-normalised embeddings, tolerance {TOLERANCE:.0e})")
    return data


def onnx_embedder(model: nn.Module, input_size: tuple[int, int] = (112, 112),
                  data: bytes | None = None, spin: bool = True) -> OnnxEmbedder:
    """An onnxruntime CPU session (facelab.onnx_model.open_session: as many threads as torch, spin
    as there) on `data`, an export of `model` (onnx_export's, made here when None): images float32
    [B, 3, H, W] (B free) -> raw embeddings float32 [B, d]."""
    name = type(model).__name__
    session = open_session(onnx_export(model, input_size) if data is None else data, spin)
    return OnnxEmbedder(Path(f"<{name} exported in memory>"), session, {"backbone": name})


def onnx_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("onnxruntime", "onnx", "onnxscript"))


def _median_seconds(paths: dict[str, Callable], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds per call of each path on `x`. Each path runs in blocks: untimed calls for at
    least SWITCH_S (one at least), then `rounds` timed calls back to back; first in the given
    order, then in reverse, which shares a drift of the machine's load between the paths. The
    untimed calls are there because a runtime's thread pool keeps working after its last call:
    onnxruntime's threads spin for about 40 ms (measured), torch's OpenMP threads for about 8 ms,
    then they sleep; the other runtime's first calls meanwhile run on fewer cores (up to 3-6x
    slower on 2 cores), and a sleeping pool takes time to wake."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.no_grad():
        for order in (list(paths), list(paths)[::-1]):
            for name in order:
                start = time.perf_counter()
                paths[name](x)
                while time.perf_counter() - start < SWITCH_S:
                    paths[name](x)
                for _ in range(rounds):
                    start = time.perf_counter()
                    paths[name](x)
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _fastest_fp32(model: nn.Module, input_size: tuple[int, int],
                  digest: str | None) -> tuple[nn.Module, str]:
    """torch "fp32" or the onnxruntime export, whichever embeds a probe batch faster here; the
    choice (and the export) kept for the next load (facelab.recognize.runtime_cache). The
    onnxruntime session returned does not spin: a detector runs between its calls."""
    torch_path = _copy_for_cpu(model, FP32)
    if not onnx_installed():
        log.info("auto: no native bf16; onnxruntime/onnx/onnxscript not installed: torch fp32")
        return torch_path, FP32
    key = runtime_cache.cache_key(model, input_size, digest)
    kept = runtime_cache.read(key)
    if kept is not None and kept[0] in (FP32, ONNXRUNTIME_FP32):
        choice, data = kept
        if choice == FP32:
            log.info("auto: no native bf16; torch fp32 (kept from an earlier timing)")
            return torch_path, FP32
        try:
            path = onnx_embedder(model, input_size, data=data, spin=False)
            log.info("auto: no native bf16; onnxruntime fp32 (kept from an earlier timing)")
            return path, ONNXRUNTIME_FP32
        except Exception as e:  # noqa: BLE001 - a damaged kept export: measure again
            log.info("auto: the kept onnxruntime export does not open (%s): timing again", e)
    try:
        data = onnx_export(model, input_size)
    except FacelabError as e:
        log.warning("auto: no native bf16 and no onnxruntime path (%s); using torch fp32", e)
        return torch_path, FP32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBE_BATCH, 3, *input_size, generator=gen)  # [B, 3, H, W]
    probe = onnx_embedder(model, input_size, data=data)
    secs = _median_seconds({FP32: torch_path, ONNXRUNTIME_FP32: probe}, x, _PROBE_ROUNDS)
    used = FP32 if secs[FP32] < secs[ONNXRUNTIME_FP32] else ONNXRUNTIME_FP32
    log.info("auto: no native bf16; batch of %d: torch fp32 %.1f ms, onnxruntime fp32 %.1f ms: %s",
             _PROBE_BATCH, 1e3 * secs[FP32], 1e3 * secs[ONNXRUNTIME_FP32], used)
    ms = {k: 1e3 * v for k, v in secs.items()}
    runtime_cache.write(key, used, ms, data if used == ONNXRUNTIME_FP32 else None)
    if used == FP32:
        return torch_path, FP32
    return onnx_embedder(model, input_size, data=data, spin=False), ONNXRUNTIME_FP32


def prepare(model: nn.Module, precision: str = "auto", input_size: tuple[int, int] = (112, 112),
            digest: str | None = None) -> tuple[nn.Module, str]:
    """(module, precision used) for embedding on the CPU with `model`, an embedding network mapping
    preprocessed crops float32 [B, 3, H, W] to raw embeddings [B, d].

    The module takes the same float32 input and returns float32 raw embeddings (embed_images adds
    the flip and normalises). precision: "bf16", "fp32" or "auto" (see the module docstring); the
    precision used is "bf16", "fp32" or "onnxruntime-fp32". An OnnxEmbedder (an exported model)
    passes through unchanged as "onnxruntime-fp32" ("bf16" is refused for it: onnxruntime runs
    the export in float32). input_size: (H, W) of the crops, used only by "auto" without native
    bf16, to export the model and time the two float32 paths. digest: facelab.model.weights_digest
    of `model`'s weights when the caller already has it (the key of the kept choice).

    `model` itself is not modified (the module returned holds a deep copy, on the CPU). Process
    wide, denormal floats are flushed to zero from here on (torch.set_flush_denormal): on x86 an
    operation on a denormal number (|x| < 1.2e-38 in float32) takes a microcode assist costing
    10-100x a normal one, and trained weights and activations near zero can hit it; embeddings
    change by far less than float32 rounding. FacelabError for an unknown precision.
    """
    if precision not in PRECISIONS:
        raise FacelabError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if isinstance(model, OnnxEmbedder):
        if precision == BF16:
            raise FacelabError(f"{model.path}: an exported ONNX model runs in onnxruntime fp32; "
                               "precision 'bf16' needs the run folder or its checkpoint")
        return model, ONNXRUNTIME_FP32
    if isinstance(model, CpuEmbedder):
        if precision in ("auto", model.precision):
            return model, model.precision
        raise FacelabError(f"this model is already prepared in {model.precision}; prepare the "
                           f"original model for {precision}")
    # Flush denormals to zero: on x86 every operation on a denormal float (weights or activations
    # near zero, |x| < 1.2e-38) takes a microcode assist costing 10-100x a normal one.
    torch.set_flush_denormal(True)
    if precision == "auto":
        if native_bf16():
            precision = BF16
        else:
            return _fastest_fp32(model, input_size, digest)
    return _copy_for_cpu(model, precision), precision
