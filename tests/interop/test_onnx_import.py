"""import_onnx: face-embedding ONNX files of other tools (no facelab metadata) made usable by facelab.

Small non-facelab torch models are written with torch's exporters (NCHW or NHWC input, dynamic or
fixed batch, RGB or BGR), imported with their preprocessing, and evaluated through load_model and
embed_images; the truth is computed by hand: numpy preprocessing and a plain onnxruntime session
on the ORIGINAL file, image by image, flip-fused and L2-normalised."""

import hashlib
import json
import logging
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from tests.references.float_paths import DIST_TOL  # noqa: E402

from facelab.data.transforms import PREPROCESS_DEFAULT, check_preprocess  # noqa: E402
from facelab.errors import FacelabError  # noqa: E402
from facelab.eval.embed import embed_images  # noqa: E402
from facelab.interop.onnx_import import PRESETS, import_onnx, preset  # noqa: E402
from facelab.model import load_model  # noqa: E402
from facelab.onnx_model import OnnxEmbedder, read_metadata  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # onnxruntime sessions follow torch's thread count
    yield
    torch.set_num_threads(threads)


def _net(seed, d=16):
    """A small embedding network of nobody's toolkit: [B, 3, H, W] -> [B, d]."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((4, 4)),
        nn.Flatten(), nn.Linear(8 * 16, d),
    ).eval()


class Nhwc(nn.Module):
    """Takes [B, H, W, 3], as TensorFlow-born models do."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


class TrainedOnBgr(nn.Module):
    """A model whose input is BGR: it reverses the channels itself and runs an RGB network."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.flip(1))


class OneAtATime(nn.Module):
    """Declares a dynamic batch axis but reshapes to [1, ...]: embeds one image per call only."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        feats = self.net[:4](x)  # [B, 128]
        return self.net[4](feats.reshape(1, -1))


def _export(model, path, shape, dynamic=True, dynamo=False, names=("data",)):
    """Write `model` on inputs of `shape` with torch's exporter; batch axis dynamic or fixed."""
    example = tuple(torch.zeros(shape) for _ in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = tuple({0: torch.export.Dim("batch")} for _ in names) if dynamic else None
            torch.onnx.export(model, example, str(path), dynamo=True, input_names=list(names),
                              output_names=["fc1"], dynamic_shapes=dims, verbose=False)
        else:
            axes = {n: {0: "N"} for n in (*names, "fc1")} if dynamic else None
            torch.onnx.export(model, example, str(path), dynamo=False, input_names=list(names),
                              output_names=["fc1"], dynamic_axes=axes)
    return path


def _images(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _by_hand(path, images, pre, layout):
    """L2-normalised f(x) + f(flip x) of RGB uint8 [N, H, W, 3]: numpy preprocessing and the
    original file in a plain onnxruntime session, one image per call (repeated to fill a fixed
    batch of N, first row kept)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, n = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[0]
    n = n if isinstance(n, int) else 1
    mean = np.asarray(pre["mean"], np.float32)  # () or [3], the model's channel order
    std = np.asarray(pre["std"], np.float32)

    def f(img):  # uint8 [H, W, 3] -> [d]
        x = img.astype(np.float32)
        if pre["colour"] == "BGR":
            x = x[..., ::-1]
        x = (x / np.float32(255) - mean) / std  # [H, W, 3]
        if layout == "NCHW":
            x = x.transpose(2, 0, 1)  # [3, H, W]
        feed = np.ascontiguousarray(np.repeat(x[None], n, axis=0), np.float32)  # [n, ...]
        return sess.run(None, {name: feed})[0][0]

    emb = np.stack([f(im) + f(im[:, ::-1]) for im in images])  # [N, d]
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _props(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


PRE_96 = {"template": "arcface96x112", "size": 112, "colour": "RGB", "mean": [0.5, 0.45, 0.4],
          "std": [0.25, 0.3, 0.2]}
PRE_BGR = {**PRESETS["insightface"], "colour": "BGR", "mean": [0.4, 0.45, 0.5]}

CASES = {  # name: (model, input shape, dynamic, dynamo, preprocess, layout, batch)
    "dynamic_nchw": (lambda: _net(0), (2, 3, 112, 112), True, True, PRESETS["insightface"],
                     "NCHW", "dynamic"),
    "batch1_96x112": (lambda: _net(1), (1, 3, 112, 96), False, False, PRE_96, "NCHW", 1),
    "batch2": (lambda: _net(2), (2, 3, 112, 112), False, False, PRESETS["insightface"], "NCHW",
               2),
    "nhwc": (lambda: Nhwc(_net(3)), (2, 112, 96, 3), True, False, PRE_96, "NHWC", "dynamic"),
    "bgr": (lambda: TrainedOnBgr(_net(4)), (2, 3, 112, 112), True, False, PRE_BGR, "NCHW",
            "dynamic"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_imported_model_embeds_as_computed_by_hand(tmp_path, case):
    make, shape, dynamic, dynamo, pre, layout, batch = CASES[case]
    src = _export(make(), tmp_path / "src.onnx", shape, dynamic, dynamo)
    before = onnx.load(str(src))
    result = import_onnx(src, tmp_path / "out.onnx", pre)
    assert (result["input_layout"], result["batch"], result["embedding_size"]) == (layout, batch, 16)

    after = onnx.load(str(tmp_path / "out.onnx"))
    assert after.graph.SerializeToString() == before.graph.SerializeToString()  # graph untouched
    props = _props(tmp_path / "out.onnx")
    assert props["facelab_format"] == "facelab-onnx" and props["facelab_format_version"] == "2"
    assert props["input_layout"] == layout and props["batch"] == str(batch)
    assert props["backbone"] == "imported" and props["embedding_size"] == "16"
    assert json.loads(props["preprocess"]) == check_preprocess(pre)
    assert json.loads(props["imported_from"]) == {
        "path": str(src.resolve()), "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}

    model, preprocess = load_model(tmp_path / "out.onnx")
    assert isinstance(model, OnnxEmbedder) and preprocess == check_preprocess(pre)
    h, w = (shape[1], shape[2]) if layout == "NHWC" else shape[2:]
    images = _images(5, h, w)
    got = embed_images(model, images, batch_size=3, preprocess=preprocess)  # chunks of 3 and 2
    np.testing.assert_allclose(got, _by_hand(src, images, pre, layout), rtol=0, atol=DIST_TOL)


def test_bgr_model_imported_as_bgr_equals_its_rgb_network(tmp_path):
    """colour BGR: to_input reverses the channels, so the BGR model's own flip undoes it and the
    embeddings are those of the RGB network inside; imported as RGB they differ."""
    rgb = _export(_net(4), tmp_path / "rgb.onnx", (2, 3, 112, 112))
    bgr = _export(TrainedOnBgr(_net(4)), tmp_path / "bgr.onnx", (2, 3, 112, 112))
    mean = [0.4, 0.45, 0.5]  # the BGR model's channel order: B, G, R
    import_onnx(rgb, tmp_path / "rgb_in.onnx", {"colour": "RGB", "mean": mean[::-1]})
    import_onnx(bgr, tmp_path / "bgr_in.onnx", {"colour": "BGR", "mean": mean})
    import_onnx(bgr, tmp_path / "wrong.onnx", {"colour": "RGB", "mean": mean[::-1]})
    images = _images(4, 112, 112, seed=1)
    emb = {}
    for k in ("rgb_in", "bgr_in", "wrong"):
        model, pre = load_model(tmp_path / f"{k}.onnx")
        emb[k] = embed_images(model, images, preprocess=pre)
    np.testing.assert_allclose(emb["bgr_in"], emb["rgb_in"], rtol=0, atol=DIST_TOL)
    assert np.abs(emb["wrong"] - emb["rgb_in"]).max() > 100 * DIST_TOL


def test_dynamic_axis_that_takes_one_image_is_stored_as_batch_1(tmp_path, caplog):
    src = _export(OneAtATime(_net(5)), tmp_path / "src.onnx", (1, 3, 112, 112))
    assert onnx.load(str(src)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    with caplog.at_level(logging.WARNING, logger="facelab"):
        result = import_onnx(src, tmp_path / "out.onnx", preset("insightface"), backbone="r-one")
    assert result["batch"] == 1 and "one image at a time" in caplog.text
    assert _props(tmp_path / "out.onnx")["backbone"] == "r-one"
    model, pre = load_model(tmp_path / "out.onnx")
    images = _images(3, 112, 112)
    np.testing.assert_allclose(embed_images(model, images, preprocess=pre),
                               _by_hand(src, images, pre, "NCHW"), rtol=0, atol=DIST_TOL)


def _symbolic_graph(path):
    """Input [N, a, b, c] (every axis symbolic) -> GlobalAveragePool -> Flatten: [N, C]."""
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("GlobalAveragePool", ["x"], ["p"]), h.make_node("Flatten", ["p"], ["y"])],
        "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "a", "b", "c"])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", "d"])],
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), str(path))
    return path


def test_an_open_layout_must_be_stated(tmp_path):
    src = _symbolic_graph(tmp_path / "sym.onnx")
    with pytest.raises(FacelabError, match=f"^{re.escape(str(src))}: input 'x' has shape "
                       r"\[N, a, b, c\], which fits both NCHW and NHWC; state the layout"):
        import_onnx(src, tmp_path / "out.onnx", preset("insightface"))
    result = import_onnx(src, tmp_path / "out.onnx", preset("insightface"), layout="NCHW")
    assert result["embedding_size"] == 3 and result["batch"] == "dynamic"
    assert load_model(tmp_path / "out.onnx")[0](torch.ones(2, 3, 112, 112)).shape == (2, 3)


def _two_inputs(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net(0)

        def forward(self, a, b):
            return self.net(a + b)

    return _export(Two(), tmp_path / "two.onnx", (1, 3, 112, 112), names=("a", "b"))


def _rank3(tmp_path):
    class Rank3(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net(0)

        def forward(self, x):
            return self.net(x)[:, None, :]  # [B, 1, d]

    return _export(Rank3(), tmp_path / "rank3.onnx", (1, 3, 112, 112))


def _text(tmp_path):
    (tmp_path / "notes.onnx").write_text("not a model\n")
    return tmp_path / "notes.onnx"


def _empty(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    return tmp_path / "empty.onnx"


def _facelab_file(tmp_path):
    src = _export(_net(0), tmp_path / "plain.onnx", (1, 3, 112, 112))
    import_onnx(src, tmp_path / "done.onnx", preset("insightface"))
    return tmp_path / "done.onnx"


@pytest.mark.parametrize(("make", "match"), [
    (_facelab_file, "already carries facelab metadata .facelab_format 'facelab-onnx'."),
    (_text, "not an ONNX model .DecodeError"),
    (_empty, "not an ONNX model .no IR version"),
    (lambda p: _export(_net(0), p / "s96.onnx", (1, 3, 96, 96)),
     r"input 'data' has shape \[N, 3, 96, 96\]; expected \[B, 3, 112, 112\] .NCHW. or "
     r"\[B, 112, 112, 3\] .NHWC. for preprocess template 'arcface112' size 112"),
    (_two_inputs, r"the graph has 2 inputs \('a', 'b'\); facelab feeds one"),
    (_rank3, r"output 'fc1' has shape \[N, 1, 16\]; expected embeddings \[B, d\]"),
])
def test_unusable_files_are_refused_in_one_line(tmp_path, make, match):
    src = make(tmp_path)
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(FacelabError, match=f"^{re.escape(str(src))}: {match}") as info:
        import_onnx(src, out, preset("insightface"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written, no folder left


def test_bad_arguments(tmp_path):
    src = _export(_net(0), tmp_path / "src.onnx", (1, 3, 112, 112))
    for kwargs, match in [
        ({"out": tmp_path / "m.pt"}, "m.pt: the imported model's file name must end in .onnx"),
        ({"out": src}, "is the source file itself"),
        ({"preprocess": {"colour": "RBG"}}, "preprocess.colour must be 'RGB' or 'BGR'"),
        ({"preprocess": {"template": "nope"}}, "unknown alignment template 'nope'"),
        ({"preprocess": {"size": 0}}, "preprocess.size must be a positive integer, got 0"),
        ({"layout": "CHWN"}, "layout must be one of NCHW, NHWC, got 'CHWN'"),
        ({"src": tmp_path / "missing.onnx"}, "missing.onnx: no such file"),
    ]:
        args = {"src": src, "out": tmp_path / "m.onnx", "preprocess": {}, **kwargs}
        with pytest.raises(FacelabError, match=match):
            import_onnx(**args)
    with pytest.raises(FacelabError, match=r"unknown preprocessing preset 'arcface'; choose one"):
        preset("arcface")
    assert not (tmp_path / "m.onnx").exists()


def test_presets():
    assert PRESETS["insightface"] == PREPROCESS_DEFAULT  # facelab's default is insightface's
    for name in PRESETS:
        assert check_preprocess(preset(name)) == PRESETS[name]
    p = preset("insightface")
    p["size"] = 1
    assert PRESETS["insightface"]["size"] == 112  # a copy


V1 = {"facelab_format": "facelab-onnx", "facelab_format_version": "1", "embedding_size": "8",
      "preprocess": json.dumps(PREPROCESS_DEFAULT)}


def test_read_metadata_versions_and_new_fields():
    meta = read_metadata(V1, "m.onnx")  # an export: NCHW, dynamic batch
    assert (meta["input_layout"], meta["batch"]) == ("NCHW", "dynamic")
    v2 = {**V1, "facelab_format_version": "2", "input_layout": "NHWC", "batch": "4",
          "imported_from": json.dumps({"path": "/x.onnx", "sha256": "ab"})}
    meta = read_metadata(v2, "m.onnx")
    assert (meta["input_layout"], meta["batch"]) == ("NHWC", 4)
    assert meta["imported_from"] == {"path": "/x.onnx", "sha256": "ab"}
    for props, match in [
        ({**v2, "input_layout": "NCWH"}, "'input_layout' must be one of NCHW, NHWC, got 'NCWH'"),
        ({**v2, "batch": "0"}, "'batch' must be 'dynamic' or a positive integer, got '0'"),
        ({**v2, "batch": "static"}, "'batch' must be 'dynamic' or a positive integer"),
        ({**v2, "imported_from": "{"}, "'imported_from' is not JSON"),
        ({**v2, "imported_from": "[]"}, "'imported_from' must be a JSON object"),
        ({**V1, "batch": "1"}, "'batch' needs facelab_format_version 2, the file says '1'"),
        ({**V1, "facelab_format_version": "3"}, "facelab_format_version is '3'.*versions 1..2"),
    ]:
        with pytest.raises(FacelabError, match=f"^m.onnx: metadata .*{match}"):
            read_metadata(props, "m.onnx")
