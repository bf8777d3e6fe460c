"""A reader for dlib's face-recognition ResNet file, `dlib_face_recognition_resnet_model_v1.dat`.

The network is the `anet_type` of dlib's examples/dnn_face_recognition_ex.cpp: a ResNet (He et
al. 2016, "Deep Residual Learning for Image Recognition") on 150x150 RGB chips, trained with
dlib's metric loss (`loss_metric`, a pair-margin loss on 128-d descriptors), LFW 99.38% as
published by dlib. The file is dlib's own binary serialisation of that C++ type, read here
without dlib (written from dlib's format as documented by its sources, not from its code):

- integers: one control byte (low nibble: number of bytes that follow, 1..8; bit 0x80: negative
  for signed types), then the magnitude little-endian;
- floats / doubles: two integers, an int64 mantissa and an int16 exponent, value
  mantissa * 2**exponent (exponents 32000 / 32001 / 32002: +inf / -inf / NaN);
- strings: a length (integer), then the bytes; bools: the character '0' or '1';
- `resizable_tensor`: version 2, then num_samples, k, nr, nc (integers), then the values as
  float32 little-endian; `alias_tensor` (a view into a layer's `params`): version 1 and the 4 dims;
- a network `loss<L1<L2<...<input>>>>` is written outside in: the loss's version and details, then
  every layer wrapper's version from the outermost inwards (`add_layer` 1 or 2, or 2/3 for the one
  holding the input layer; `tag`/`skip` 1, which carry nothing else), then the input layer, then
  each layer's details with its (empty) cached tensors from the innermost outwards.

Since tag and skip ids are types, not data, the graph is not in the file: `DLIB_RESNET_V1` lists
the expected layers of `anet_type`, and the reader checks the file against it. `read_dlib_resnet`
returns the layers in forward order (input first) with their parameters as numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facelab.backbones.dlib_resnet import EMBEDDING_SIZE, INPUT_SIZE
from facelab.errors import FacelabError

# the input layer's name and the loss's, as dlib writes them
INPUT_NAME = "input_rgb_image_sized"


@dataclass
class DlibLayer:
    """One layer of a dlib network in forward order.

    kind: "input", "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc", "tag",
    "skip" or "loss_metric"; attrs: its settings (filter size, strides, tag id, ...); params:
    numpy float32 arrays ("weight" / "bias" for con [out, in, kh, kw] / [out] and fc [out, in],
    "gamma" / "beta" for affine [k]).
    """

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)


def _spec(kind: str, **attrs: Any) -> tuple[str, dict[str, Any]]:
    return kind, attrs


def _block(n: int, stride: int) -> list[tuple[str, dict[str, Any]]]:
    """dlib's `block<N,affine,stride>` outside in: affine<con<N,3,3,1,1,relu<affine<con<N,3,3,
    stride,stride,...>>>>>."""
    return [_spec("affine"), _spec("con", filters=n, size=3, stride=1), _spec("relu"),
            _spec("affine"), _spec("con", filters=n, size=3, stride=stride)]


def _ares(n: int) -> list[tuple[str, dict[str, Any]]]:
    """relu<add_prev1<block<N,affine,1,tag1<...>>>> outside in."""
    return [_spec("relu"), _spec("add_prev", tag=1), *_block(n, 1), _spec("tag", id=1)]


def _ares_down(n: int) -> list[tuple[str, dict[str, Any]]]:
    """relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<...>>>>>>> outside in."""
    return [_spec("relu"), _spec("add_prev", tag=2), _spec("avg_pool", size=2, stride=2),
            _spec("skip", id=1), _spec("tag", id=2), *_block(n, 2), _spec("tag", id=1)]


def _anet_type() -> list[tuple[str, dict[str, Any]]]:
    """The layers below the loss of dnn_face_recognition_ex.cpp's `anet_type`, outside in."""
    specs = [_spec("fc", outputs=EMBEDDING_SIZE, bias=False), _spec("avg_pool", size=0, stride=1)]
    specs += _ares_down(256)                                          # alevel0
    specs += _ares(256) + _ares(256) + _ares_down(256)                # alevel1
    specs += _ares(128) + _ares(128) + _ares_down(128)                # alevel2
    specs += _ares(64) + _ares(64) + _ares(64) + _ares_down(64)       # alevel3
    specs += _ares(32) + _ares(32) + _ares(32)                        # alevel4
    specs += [_spec("max_pool", size=3, stride=2), _spec("relu"), _spec("affine"),
              _spec("con", filters=32, size=7, stride=2)]
    return specs


# outside in, as dlib writes them: (kind, expected attributes)
DLIB_RESNET_V1: list[tuple[str, dict[str, Any]]] = _anet_type()


class _Stream:
    """dlib's primitive encodings over an in-memory file; errors name the file and offset."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def fail(self, message: str) -> FacelabError:
        return FacelabError(
            f"{self.name}: not dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_"
            f"v1): {message} (at byte {self.pos} of {len(self.data)})")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail("the file ends early (truncated?)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self, signed: bool = True) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        negative = bool(control & 0x80)
        if size == 0 or size > 8 or control & 0x70 or (negative and not signed):
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if negative else value

    def real(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("a floating point number in dlib's old text format (not supported)")
        mantissa = self.integer()
        exponent = self.integer()
        if exponent == 32000:
            return math.inf
        if exponent == 32001:
            return -math.inf
        if exponent == 32002:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def string(self) -> str:
        n = self.integer(signed=False)
        if n > 256:
            raise self.fail(f"a string of {n} bytes where a layer name was expected")
        try:
            return self.take(n).decode("ascii")
        except UnicodeDecodeError as e:
            raise self.fail("a layer name that is not text") from e

    def boolean(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            raise self.fail(f"bad bool {ch!r}")
        return ch == b"1"

    def version(self, what: str, allowed: tuple[int, ...]) -> int:
        v = self.integer()
        if v not in allowed:
            raise self.fail(f"{what} version {v}, expected {' or '.join(map(str, allowed))}")
        return v

    def tensor(self) -> np.ndarray:
        """A resizable_tensor: float32 [num_samples, k, nr, nc]."""
        self.version("tensor", (2,))
        dims = [self.integer() for _ in range(4)]
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimensions {dims}")
        count = math.prod(dims)
        values = np.frombuffer(self.take(4 * count), dtype="<f4")
        return values.astype(np.float32).reshape(dims)

    def alias(self) -> tuple[int, ...]:
        """An alias_tensor: its 4 dims only."""
        self.version("alias_tensor", (1,))
        return tuple(self.integer() for _ in range(4))


def _slices(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Cut a layer's flat `params` into consecutive arrays of these shapes (dlib's alias_tensor
    offsets), checking the sizes add up."""
    flat = params.reshape(-1)
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != flat.size:
        raise ValueError(f"{flat.size} parameters for shapes {shapes}")
    out, offset = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(flat[offset:offset + size].reshape(shape).copy())
        offset += size
    return out


def _read_details(s: _Stream) -> DlibLayer:
    """One layer's details (after its add_layer version): dispatch on the name dlib writes."""
    name = s.string()
    if name in ("con_4", "con_5", "con_6"):
        params = s.tensor()
        filters = s.integer()
        nr, nc, stride_y, stride_x, pad_y, pad_x = (s.integer() for _ in range(6))
        w_shape = s.alias()                         # [out, in, nr, nc]
        s.alias()                                   # biases: [1, out, 1, 1]
        for _ in range(4):                          # learning-rate / weight-decay multipliers
            s.real()
        use_bias = s.boolean() if name in ("con_5", "con_6") else True
        use_relu = s.boolean() if name == "con_6" else False
        shapes = [w_shape] + ([(filters,)] if use_bias else [])
        try:
            arrays = _slices(params, *shapes)
        except ValueError as e:
            raise s.fail(f"con_ layer: {e}") from e
        layer = DlibLayer("con", {"filters": filters, "size": (nr, nc),
                                  "stride": (stride_y, stride_x), "padding": (pad_y, pad_x),
                                  "relu": use_relu}, {"weight": arrays[0]})
        if use_bias:
            layer.params["bias"] = arrays[1]
        return layer
    if name in ("affine_", "affine_2"):
        params = s.tensor()
        g_shape = s.alias()                         # [1, k, 1, 1] in CONV_MODE
        s.alias()                                   # beta: same shape
        mode = s.integer()
        disabled = s.boolean() if name == "affine_2" else False
        if disabled:
            return DlibLayer("affine", {"mode": mode, "disabled": True})
        try:
            gamma, beta = _slices(params, g_shape, g_shape)
        except ValueError as e:
            raise s.fail(f"affine_ layer: {e}") from e
        return DlibLayer("affine", {"mode": mode, "disabled": False},
                         {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1)})
    if name in ("bn_con2", "bn_fc2"):
        # a batch-norm layer read as dlib reads it into an affine_: gamma / sqrt(var + eps), ...
        params = s.tensor()
        g_shape = s.alias()
        s.alias()
        s.tensor()                                  # means, invstds of the last batch
        s.tensor()
        running_means = s.tensor().reshape(-1)
        running_variances = s.tensor().reshape(-1)
        s.integer(signed=False)                     # num_updates
        s.integer(signed=False)                     # running_stats_window_size
        for _ in range(4):
            s.real()
        eps = s.real()
        try:
            gamma, beta = (a.reshape(-1) for a in _slices(params, g_shape, g_shape))
        except ValueError as e:
            raise s.fail(f"bn_ layer: {e}") from e
        scale = (gamma / np.sqrt(running_variances + np.float32(eps))).astype(np.float32)
        shift = (beta - scale * running_means).astype(np.float32)
        return DlibLayer("affine", {"mode": 0 if name == "bn_con2" else 1, "disabled": False},
                         {"gamma": scale, "beta": shift})
    if name in ("relu_", "relu_2"):
        disabled = s.boolean() if name == "relu_2" else False
        return DlibLayer("relu", {"disabled": disabled})
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, stride_y, stride_x, pad_y, pad_x = (s.integer() for _ in range(6))
        return DlibLayer(name[:-2], {"size": (nr, nc), "stride": (stride_y, stride_x),
                                     "padding": (pad_y, pad_x)})
    if name == "add_prev_":
        return DlibLayer("add_prev")
    if name in ("fc_2", "fc_3"):
        outputs = s.integer(signed=False)
        inputs = s.integer(signed=False)
        params = s.tensor()
        w_shape = s.alias()                         # [inputs, outputs, 1, 1]: y = x @ W
        s.alias()
        bias_mode = s.integer()                     # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
        for _ in range(4):
            s.real()
        use_bias = s.boolean() if name == "fc_3" else True
        has_bias = bias_mode == 0 and use_bias
        shapes = [w_shape] + ([(outputs,)] if has_bias else [])
        try:
            arrays = _slices(params, *shapes)
        except ValueError as e:
            raise s.fail(f"fc_ layer: {e}") from e
        layer = DlibLayer("fc", {"outputs": outputs, "inputs": inputs, "bias": has_bias},
                          {"weight": np.ascontiguousarray(arrays[0].reshape(inputs, outputs).T)})
        if has_bias:
            layer.params["bias"] = arrays[1]
        return layer
    raise s.fail(f"unexpected layer {name!r}")


def _read_cached(s: _Stream, version: int, holds_input: bool) -> None:
    """The rest of an add_layer after its details: flags and cached tensors (empty in a saved
    network; read and dropped)."""
    for _ in range(3):      # this_layer_setup_called, gradient_input_is_stale, output disabled
        s.boolean()
    s.tensor()              # x_grad
    s.tensor()              # cached_output
    if holds_input:
        s.tensor()          # grad_final
        if version >= 3:
            s.integer(signed=False)     # _sample_expansion_factor
    elif version == 2:
        s.tensor()          # params_grad


def _check(s: _Stream, layer: DlibLayer, kind: str, attrs: dict[str, Any], index: int) -> None:
    """The layer read matches the expected one of `anet_type`."""
    where = f"layer {index} (outside in)"
    if layer.kind != kind:
        raise s.fail(f"{where} is {layer.kind}, expected {kind}")
    if kind == "con":
        want = (attrs["filters"], (attrs["size"],) * 2, (attrs["stride"],) * 2)
        got = (layer.attrs["filters"], layer.attrs["size"], layer.attrs["stride"])
        pad = 0 if attrs["stride"] != 1 else attrs["size"] // 2   # dlib's default padding
        if got != want or layer.attrs["padding"] != (pad, pad):
            raise s.fail(f"{where}: con {layer.attrs}, expected {attrs}")
    elif kind in ("max_pool", "avg_pool"):
        got = (layer.attrs["size"], layer.attrs["stride"], layer.attrs["padding"])
        pad = 0 if attrs["stride"] != 1 else attrs["size"] // 2
        want = ((attrs["size"],) * 2, (attrs["stride"],) * 2, (pad, pad))
        if got != want:
            raise s.fail(f"{where}: {kind} {layer.attrs}, expected {attrs}")
    elif kind == "fc":
        if layer.attrs["outputs"] != attrs["outputs"] or layer.attrs["bias"] != attrs["bias"]:
            raise s.fail(f"{where}: fc {layer.attrs}, expected {attrs}")
    elif kind == "affine" and layer.attrs["mode"] != 0 and not layer.attrs["disabled"]:
        raise s.fail(f"{where}: affine in fc mode, expected per-channel (conv mode)")
    layer.attrs.update({k: v for k, v in attrs.items() if k in ("tag",)})


def parse_dlib_resnet(data: bytes, name: str = "<bytes>") -> list[DlibLayer]:
    """Layers of a serialised dlib face-recognition ResNet v1, in forward order: "input"
    (attrs: mean RGB, size), the layers of `anet_type` (tags and skips included, as dlib
    lists them), then "loss_metric" (attrs: margin, distance threshold). FacelabError when the
    bytes are not that network (other layers, other versions, truncated, trailing bytes)."""
    s = _Stream(data, name)
    s.version("loss layer", (1,))
    loss_name = s.string()
    if loss_name == "loss_metric_":
        loss = DlibLayer("loss_metric", {"margin": 0.1, "distance_threshold": 0.75})
    elif loss_name == "loss_metric_2":
        margin, threshold = s.real(), s.real()
        loss = DlibLayer("loss_metric", {"margin": margin, "distance_threshold": threshold})
    else:
        raise s.fail(f"loss {loss_name!r}, expected loss_metric_")
    specs = DLIB_RESNET_V1
    versions: list[int] = []
    for i, (kind, _attrs) in enumerate(specs):
        if kind in ("tag", "skip"):
            versions.append(s.version(f"layer {i} ({kind})", (1,)))
        elif i == len(specs) - 1:                   # the add_layer holding the input layer
            versions.append(s.version(f"layer {i} (input add_layer)", (2, 3)))
        else:
            versions.append(s.version(f"layer {i} (add_layer)", (1, 2)))
    if s.string() != INPUT_NAME:
        raise s.fail(f"no {INPUT_NAME} input layer")
    mean = (s.real(), s.real(), s.real())
    size = (s.integer(signed=False), s.integer(signed=False))
    if size != (INPUT_SIZE, INPUT_SIZE):
        raise s.fail(f"input size {size}, expected {INPUT_SIZE}x{INPUT_SIZE}")
    layers = [DlibLayer("input", {"mean_rgb": mean, "size": size})]
    for i in range(len(specs) - 1, -1, -1):         # details inside out
        kind, attrs = specs[i]
        if kind in ("tag", "skip"):
            layers.append(DlibLayer(kind, {"id": attrs["id"]}))
            continue
        layer = _read_details(s)
        _check(s, layer, kind, attrs, i)
        _read_cached(s, versions[i], holds_input=i == len(specs) - 1)
        layers.append(layer)
    if s.pos != len(s.data):
        raise s.fail(f"{len(s.data) - s.pos} bytes after the network")
    layers.append(loss)
    return layers


def read_dlib_resnet(path: str | Path) -> list[DlibLayer]:
    """`parse_dlib_resnet` of a file (dlib_face_recognition_resnet_model_v1.dat, uncompressed)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FacelabError(f"cannot read dlib model {path}: {e.strerror or e}") from e
    if data[:3] == b"BZh":
        raise FacelabError(f"{path}: a bzip2 file; decompress it first (bunzip2)")
    return parse_dlib_resnet(data, str(path))

