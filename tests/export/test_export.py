"""ONNX export: onnxruntime agrees with torch, metadata round trip, evaluation of an export (same numbers as
the checkpoint, same data checks), bad files and failed exports refused, every backbone exports."""

import importlib
import json
import logging

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from tests.references.float_paths import DIST_TOL, fold_accuracies_within  # noqa: E402

import facelab.export as E  # noqa: E402
from facelab.backbones import BACKBONES  # noqa: E402
from facelab.cli import main  # noqa: E402
from facelab.config import config_from_dict, config_to_dict  # noqa: E402
from facelab.data.pairsets import load_bin, write_bin  # noqa: E402
from facelab.data.transforms import check_preprocess  # noqa: E402
from facelab.errors import FacelabError  # noqa: E402
from facelab.eval.embed import embed_images  # noqa: E402
from facelab.eval.protocols.verification import pair_distances  # noqa: E402
from facelab.model import (  # noqa: E402
    build_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
    weights_digest,
)
from facelab.onnx_model import OnnxEmbedder  # noqa: E402

PRE = {"size": 112, "mean": [0.5, 0.45, 0.4], "std": 0.5}  # one non-default field: it must survive the trip


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # onnxruntime sessions follow torch's thread count
    yield
    torch.set_num_threads(threads)


def make_run(root, model_cfg, step=7):
    """A run folder with a randomly initialised embedding network (nothing trained)."""
    cfg = config_from_dict({"model": model_cfg})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    save_checkpoint(root / "checkpoint.pt",
                    {"model": model.state_dict(), "config": config_to_dict(cfg), "preprocess": PRE, "step": step})
    return model


def _faces(n_ids, per, seed):
    """RGB uint8 [n_ids, per, 112, 112, 3]: smooth random faces, `per` noisy photos of each."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_ids, per, 112, 112, 3), np.uint8)
    for i in range(n_ids):
        base = cv2.resize(rng.uniform(0, 255, (4, 4, 3)), (112, 112))
        for k in range(per):
            out[i, k] = np.clip(base + rng.normal(0, 25, base.shape), 0, 255)
    return out


def _pairs_bin(path, meta=None):
    """20 pairs (10 same, 10 different), interleaved, with an optional sidecar."""
    faces = _faces(20, 2, seed=1)
    images = []
    for i in range(10):
        images += [faces[i, 0], faces[i, 1], faces[10 + i, 0], faces[(11 + i) % 20, 1]]
    write_bin(path, images, [True, False] * 10, meta=meta)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(run folder, exported .onnx, torch model, export result) of a tiny model, exported by the CLI."""
    root = tmp_path_factory.mktemp("export")
    model = make_run(root / "run", {"backbone": "tiny", "embedding_size": 16, "kwargs": {"width": 4}})
    result = E.export_onnx(root / "run", root / "m.onnx")
    return root / "run", root / "m.onnx", model, result


def test_onnxruntime_matches_torch_with_a_dynamic_batch(exported):
    _, path, model, result = exported
    assert result["max_abs_diff"] <= E.TOLERANCE and result["bytes"] == path.stat().st_size
    batch_dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not a fixed size
    onnx_model, _ = load_model(path)
    assert isinstance(onnx_model, OnnxEmbedder)
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 4, 7):
        x = torch.rand(batch, 3, 112, 112, generator=gen) * 2 - 1  # [B, 3, H, W]
        got = onnx_model(x)
        with torch.no_grad():
            ref = model(x)  # the torch model is the truth
        assert got.dtype == torch.float32 and got.shape == (batch, 16)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    images = _faces(3, 2, seed=5).reshape(6, 112, 112, 3)
    np.testing.assert_allclose(embed_images(onnx_model, images, preprocess=PRE),
                               embed_images(model, images, preprocess=PRE), atol=1e-5)


def test_metadata_round_trip(exported):
    run, path, _, _ = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}  # read by onnx, not by facelab
    assert props["facelab_format"] == "facelab-onnx" and props["facelab_format_version"] == "1"
    assert props["backbone"] == "tiny" and props["embedding_size"] == "16" and props["source_step"] == "7"
    assert props["source_checkpoint"] == str((run / "checkpoint.pt").resolve())
    ckpt_pre = load_checkpoint(run)["preprocess"]
    assert json.loads(props["preprocess"]) == check_preprocess(ckpt_pre)  # completed with the defaults
    # the digest of the weights, not of a file: the checkpoint's own state dict gives it
    assert props["weights_sha256"] == weights_digest(load_checkpoint(run)["model"])
    assert "thresholds" not in props  # this run stored none
    model, preprocess = load_model(path)
    assert preprocess == check_preprocess(ckpt_pre) and preprocess["mean"] == [0.5, 0.45, 0.4]
    assert model.metadata["embedding_size"] == 16


def test_eval_of_the_export_equals_the_checkpoint(exported, tmp_path, capsys):
    run, path, _, _ = exported
    bin_path = _pairs_bin(tmp_path / "v.bin", meta={"template": "arcface112", "size": 112, "colour": "RGB"})
    metrics = {}
    for name, model in (("ckpt", run), ("onnx", path)):
        assert main(["eval", str(model), "--pairs", str(bin_path), "--out", str(tmp_path / name)]) == 0
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    pairs = {k: m["pairs"]["v"] for k, m in metrics.items()}
    # onnxruntime and torch are two kernel paths: distances to float32 rounding, and the same fold
    # accuracies unless a distance lies within that rounding of a grid threshold (then each side)
    images, same = load_bin(bin_path)
    dist = {}
    for name, model in (("ckpt", run), ("onnx", path)):
        net, pre = load_model(model)
        emb = embed_images(net, images, preprocess=pre)  # eval's own batch size and flip
        dist[name] = pair_distances(emb[0::2], emb[1::2])
    np.testing.assert_allclose(dist["onnx"], dist["ckpt"], rtol=0, atol=DIST_TOL)
    reachable = fold_accuracies_within(dist["ckpt"], same, DIST_TOL)
    for name in ("ckpt", "onnx"):
        assert tuple(pairs[name]["fold_accuracies"]) in reachable, (name, reachable)
        assert pairs[name]["accuracy"] == pytest.approx(np.mean(pairs[name]["fold_accuracies"]))
    assert pairs["ckpt"]["accuracy"] > 0.5
    assert metrics["onnx"]["data_checks"] == metrics["ckpt"]["data_checks"]
    assert metrics["onnx"]["checkpoint"] == str(path)


def test_data_mismatch_is_refused_for_the_export_unless_allowed(exported, tmp_path, capsys):
    _, path, _, _ = exported
    bin_path = _pairs_bin(tmp_path / "bgr.bin", meta={"colour": "BGR"})
    argv = ["eval", str(path), "--pairs", str(bin_path), "--out", str(tmp_path / "ev")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "colour: model 'RGB', data 'BGR' (bgr.json)" in err and "--allow-mismatch colour" in err
    assert not (tmp_path / "ev").exists()
    assert main([*argv, "--allow-mismatch", "colour"]) == 0
    checks = json.loads((tmp_path / "ev" / "metrics.json").read_text())["data_checks"]
    assert checks["sets"]["bgr"]["colour"]["status"] == "overridden"


def test_search_with_the_export_equals_the_checkpoint(exported, tmp_path, capsys):
    run, path, _, _ = exported
    faces = _faces(4, 3, seed=2)
    for i in range(4):
        for k in range(3):
            folder = tmp_path / ("gallery" if k == 0 else "probes") / f"id{i}"
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{k}.png"), cv2.cvtColor(faces[i, k], cv2.COLOR_RGB2BGR))
    cmc = {}
    for name, model in (("ckpt", run), ("onnx", path)):
        argv = ["search", str(model), "--gallery", str(tmp_path / "gallery"), "--probes", str(tmp_path / "probes"),
                "--k", "2", "--out", str(tmp_path / name)]
        assert main(argv) == 0
        cmc[name] = json.loads((tmp_path / name / "metrics.json").read_text())["cmc"]
    # onnxruntime and torch are two kernel paths: a probe's rank can change only where another
    # identity's score lies within float32 rounding of its mate's. Scored here with the checkpoint,
    # both CMCs lie between the rates counting those near ties as won and as lost (one value, and
    # so the same CMC for both, when there are none)
    net, pre = load_model(run)
    gallery = embed_images(net, faces[:, 0], preprocess=pre)  # one image, the template, per id
    probes = embed_images(net, faces[:, 1:].reshape(8, 112, 112, 3), preprocess=pre)  # [8, d]
    scores = probes.astype(np.float64) @ gallery.T.astype(np.float64)  # [8, 4]
    mates = np.repeat(np.arange(4), 2)
    margin = scores - scores[np.arange(8), mates][:, None]  # [8, 4] other score - mate score
    margin[np.arange(8), mates] = -np.inf
    best, worst = 1 + (margin > 2 * DIST_TOL).sum(1), 1 + (margin >= -2 * DIST_TOL).sum(1)  # [8]
    assert cmc["onnx"].keys() == cmc["ckpt"].keys() == {"1", "2"}
    for k, rate in cmc["ckpt"].items():
        low, high = np.mean(worst <= int(k)), np.mean(best <= int(k))
        assert low <= rate <= high and low <= cmc["onnx"][k] <= high, (k, rate, cmc["onnx"][k])


def _rewrite(src, dst, **props):
    """Copy an exported model with metadata fields replaced (value None: removed)."""
    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update(props)
    onnx.helper.set_model_props(proto, {k: v for k, v in meta.items() if v is not None})
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize(("props", "match"), [
    ({"facelab_format": None}, "not a facelab export .no metadata field 'facelab_format'"),
    ({"facelab_format": "other-onnx"}, "facelab_format is 'other-onnx'"),
    ({"facelab_format_version": "99"}, "facelab_format_version is '99'"),
    ({"preprocess": None}, "'preprocess' is missing"),
    ({"preprocess": "{size: 112"}, "'preprocess' is not a valid preprocessing record"),
    ({"preprocess": '{"colour": "RBG"}'}, "'preprocess' is not a valid .*'RBG'"),
    ({"embedding_size": "a lot"}, "'embedding_size' must be a positive integer, got 'a lot'"),
])
def test_garbled_metadata_names_the_file_and_field(exported, tmp_path, props, match):
    bad = _rewrite(exported[1], tmp_path / "bad.onnx", **props)
    with pytest.raises(FacelabError, match=f"^{bad}: .*{match}"):
        load_model(bad)


def test_foreign_and_unreadable_files(exported, tmp_path, capsys):
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    with pytest.raises(FacelabError, match=f"^{text}: not a readable ONNX model"):
        load_model(text)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(FacelabError, match=f"^{foreign}: not a facelab export"):
        load_model(foreign)
    # checkpoint-only commands refuse an export clearly (clean needs the classifier)
    assert main(["clean", str(exported[1]), "--data", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "holds the embedding network only" in capsys.readouterr().err


@pytest.fixture
def cached_export(exported, monkeypatch):
    """Make export_onnx reuse the fixture's graph (same model and weights) instead of exporting again."""
    proto = onnx.load(str(exported[1]))
    monkeypatch.setattr(E, "to_onnx", lambda *a: proto)
    return exported[0]


def test_failed_export_leaves_no_file(cached_export, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FacelabError, match="a_file: folder of m.onnx is not writable"):
        E.export_onnx(cached_export, tmp_path / "a_file" / "m.onnx")
    monkeypatch.setattr(E, "TOLERANCE", -1.0)  # no difference passes: the check refuses
    with pytest.raises(FacelabError, match="differs from the torch model by .*nothing written"):
        E.export_onnx(cached_export, tmp_path / "out" / "m.onnx")
    assert [p.name for p in tmp_path.rglob("*")] == ["a_file"]  # no .onnx, no temporary file, no folder


def test_cli_export_exit_codes(cached_export, tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="facelab"):
        assert main(["export", str(cached_export), "--out", str(tmp_path / "m.onnx")]) == 0
    assert "m.onnx (0.1 MB" in caplog.text and "max |diff|" in caplog.text
    load_model(tmp_path / "m.onnx")
    for argv, match in [
        (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.onnx")], "no checkpoint found"),
        (["export", str(cached_export), "--out", str(tmp_path / "x.pt")], "must end in .onnx"),
        (["export", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "x.onnx")], "holds the embedding network only"),
        (["export", str(cached_export), "--out", str(tmp_path / "x.onnx"), "--opset", "3"], "opset 3: the exporter"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_to_an_unwritable_folder_fails_before_any_work(
    cached_export, tmp_path, monkeypatch, capsys
):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the output folder was checked")

    monkeypatch.setattr(E, "load_checkpoint", must_not_run)
    monkeypatch.setattr(E, "to_onnx", must_not_run)
    (tmp_path / "afile").write_text("a regular file")
    folder = tmp_path / "afile" / "sub"
    assert main(["export", str(cached_export), "--out", str(folder / "m.onnx")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("facelab: error:") and str(folder) in err[0]
    assert "not writable" in err[0]


def test_the_probe_leaves_no_folder_behind(cached_export, tmp_path, monkeypatch):
    """A folder made only to prove the output writable is removed when the export then fails."""
    monkeypatch.setattr(E, "TOLERANCE", -1.0)
    with pytest.raises(FacelabError, match="nothing written"):
        E.export_onnx(cached_export, tmp_path / "new" / "deeper" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# tiny alone: the module fixture. iresnet34..200 are iresnet18's blocks at greater depth and take from ~15 s
# (iresnet50) up to a minute each to export on one thread: marked slow (make test-all).
QUICK = ("mobilefacenet", "iresnet18")


@pytest.mark.parametrize(("backbone", "groups"), [
    ("tiny", 4),
    *[pytest.param(name, 0, marks=() if name in QUICK else pytest.mark.slow) for name in BACKBONES if name != "tiny"],
])
def test_backbones_export(tmp_path, backbone, groups):
    kwargs = {"width": 4} if backbone == "tiny" else {}
    make_run(tmp_path / "run", {"backbone": backbone, "embedding_size": 8, "kwargs": kwargs,
                                "groupface": {"groups": groups, "hidden": 16}})
    result = E.export_onnx(tmp_path / "run", tmp_path / "m.onnx")
    assert result["max_abs_diff"] <= E.TOLERANCE and result["metadata"]["groupface_groups"] == str(groups)
    assert load_model(tmp_path / "m.onnx")[0](torch.zeros(1, 3, 112, 112)).shape == (1, 8)


def test_missing_onnxruntime_says_how_to_install(exported, monkeypatch):
    real = importlib.import_module

    def without_ort(name, *a):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", without_ort)
    with pytest.raises(FacelabError, match=r"onnxruntime is not installed.*pip install 'facelab\[export\]'"):
        load_model(exported[1])
