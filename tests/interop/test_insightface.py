"""insightface arcface_torch backbones in and out (facelab.interop.insightface) and the `mbf`
backbones they need.

The tables in tests/references/insightface_names/ list insightface's tensor names and shapes (d 512)
in their state-dict order, as insightface's own classes give them (arcface_torch/backbones:
iresnet.py `iresnet18..200()`, mobilefacenet.py `get_mbf(False, 512)`, `get_mbf_large(False, 512)`),
so the rules are checked against insightface, not against themselves. Synthetic checkpoints are built
from those tables; `reference_forward` is an independent functional transcription of insightface's
two architectures on their own names, which catches swapped tensors of equal shape (a block's three
BNs) that names and shapes alone cannot."""

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from facelab.backbones import build_backbone, count_macs
from facelab.config import Config, GroupFaceConfig, ModelConfig, config_to_dict
from facelab.errors import FacelabError
from facelab.interop import insightface as I
from facelab.model import build_model, load_checkpoint, load_model, save_checkpoint

TABLES = Path(__file__).resolve().parents[1] / "references" / "insightface_names"
ALL = ("r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large")
# parameters of insightface's own modules with num_features 512 (sum of numel of .parameters(),
# the frozen features.weight and mbf's GDC / linear / BN1d included), counted from their classes
PARAMETERS = {"r18": 24_025_600, "r34": 34_139_328, "r50": 43_590_848, "r100": 65_156_160,
              "r200": 118_833_920, "mbf": 2_059_520, "mbf_large": 6_314_880}
# tensors (parameters and BN buffers) per arch
TENSORS = {"r18": 187, "r34": 331, "r50": 475, "r100": 925, "r200": 1807, "mbf": 333,
           "mbf_large": 606}
MBF = {"mbf": ((1, 4, 6, 2), 2), "mbf_large": ((2, 8, 12, 4), 4)}  # (blocks, scale)
IRESNET = {"r18": (2, 2, 2, 2), "r50": (3, 4, 14, 3)}


def table(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(shape)) for name, shape in json.loads((TABLES / f"{arch}.json").read_text())]


def embedding_rows(arch: str, name: str) -> bool:
    """Whether tensor `name` has the embedding size as its first dimension."""
    if arch.startswith("mbf"):
        return name.startswith(("features.layers.2.", "features.layers.3."))
    return name.startswith(("fc.", "features."))


def synthetic(arch: str, seed: int = 0, d: int = 512, cheap: bool = False) -> dict:
    """An insightface-format state dict of `arch` with random tensors of the table's names and
    shapes (embedding size d), scaled so that deep nets give finite, non-trivial embeddings
    (cheap: zeros, for tests that never run the network)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in table(arch):
        if shape and embedding_rows(arch, name):  # not the scalar num_batches_tracked
            shape = (d, *shape[1:])
        if cheap:
            dtype = torch.long if name.endswith("num_batches_tracked") else torch.float32
            t = torch.zeros(shape, dtype=dtype)
        elif name.endswith("num_batches_tracked"):
            t = torch.randint(0, 10_000, (), generator=g)
        elif name.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif len(shape) > 1:  # conv / linear weight: unit gain
            t = torch.randn(shape, generator=g) / torch.tensor(shape[1:]).prod().sqrt()
        elif name.endswith("weight"):  # BN scale, PReLU slope
            t = torch.rand(shape, generator=g) * 0.3 + 0.2
        else:
            t = torch.randn(shape, generator=g) * 0.1
        state[name] = t
    return state


# ----------------------------------------------------------------------- independent reference


def _bn(s, p, x):
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"],
                        s[f"{p}.bias"], False, 0.0, 1e-5)


def _conv(s, p, x, stride=1, padding=0, groups=1):
    return F.conv2d(x, s[f"{p}.weight"], None, stride, padding, 1, groups)


def _iresnet(s, x, depths):
    x = F.prelu(_bn(s, "bn1", _conv(s, "conv1", x, padding=1)), s["prelu.weight"])
    for stage, depth in enumerate(depths, 1):
        for unit in range(depth):
            p, stride = f"layer{stage}.{unit}", 2 if unit == 0 else 1
            y = _conv(s, f"{p}.conv1", _bn(s, f"{p}.bn1", x), padding=1)
            y = F.prelu(_bn(s, f"{p}.bn2", y), s[f"{p}.prelu.weight"])
            y = _bn(s, f"{p}.bn3", _conv(s, f"{p}.conv2", y, stride, 1))
            if unit == 0:  # 1x1 stride-2 projection shortcut
                x = _bn(s, f"{p}.downsample.1", _conv(s, f"{p}.downsample.0", x, stride))
            x = x + y
    x = _bn(s, "bn2", x).flatten(1)  # [B, 512*7*7]
    return _bn(s, "features", F.linear(x, s["fc.weight"], s["fc.bias"]))


def _mbf(s, x, blocks, scale):
    def unit(p, x, k=1, stride=1, groups=1, act=True):  # conv k x k -> BN (-> PReLU)
        x = _bn(s, f"{p}.1", _conv(s, f"{p}.0", x, stride, k // 2, groups))
        return F.prelu(x, s[f"{p}.2.weight"]) if act else x

    def bottleneck(p, x, stride=1):  # 1x1 -> depthwise 3x3 -> linear 1x1 (+ x when stride 1)
        hidden = s[f"{p}.layers.0.layers.0.weight"].shape[0]
        y = unit(f"{p}.layers.0.layers", x)
        y = unit(f"{p}.layers.1.layers", y, 3, stride, hidden)
        y = unit(f"{p}.layers.2.layers", y, act=False)
        return y if stride == 2 else x + y

    x = unit("layers.0.layers", x, 3, 2)
    if blocks[0] == 1:
        x = unit("layers.1.layers", x, 3, groups=64)
    for j in range(blocks[0] if blocks[0] > 1 else 0):
        x = bottleneck(f"layers.1.layers.{j}", x)
    for k in range(3):
        x = bottleneck(f"layers.{2 + 2 * k}", x, stride=2)
        for j in range(blocks[k + 1]):
            x = bottleneck(f"layers.{3 + 2 * k}.layers.{j}", x)
    x = unit("conv_sep.layers", x)  # [B, 512, 7, 7]
    x = _bn(s, "features.layers.0.layers.1", _conv(s, "features.layers.0.layers.0", x,
                                                   groups=512)).flatten(1)  # [B, 512]
    return _bn(s, "features.layers.3", F.linear(x, s["features.layers.2.weight"]))


def reference_forward(arch: str, state: dict, x: torch.Tensor) -> torch.Tensor:
    """insightface's network of `arch` in eval mode, on its own tensor names."""
    with torch.no_grad():
        if arch in MBF:
            return _mbf(state, x, *MBF[arch])
        return _iresnet(state, x, IRESNET[arch])


def faces(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(7)) * 2 - 1


# ----------------------------------------------------------------------- tables and models


@pytest.mark.parametrize("arch", ALL)
def test_name_rules_give_insightface_tables(arch):
    rows = I.name_table(arch)
    assert [(theirs, shape) for _, theirs, shape in rows] == table(arch)
    assert len(rows) == TENSORS[arch]
    with torch.device("meta"):
        model = build_backbone(I.ARCHS[arch])
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[arch]


@pytest.mark.parametrize("arch", ["mbf", "mbf_large"])
def test_mbf_backbones(arch):
    torch.manual_seed(0)
    model = build_backbone(arch, embedding_size=32)
    out = model(faces(2))  # [2, 32], training mode
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.features.weight.requires_grad  # insightface's plain affine BatchNorm1d
    gmacs = count_macs(build_backbone(arch)) / 1e9
    assert gmacs == pytest.approx({"mbf": 0.4375, "mbf_large": 1.8165}[arch], rel=1e-3)


# ----------------------------------------------------------------------- import and export


@pytest.mark.parametrize("arch", ["r18", "mbf", "mbf_large"])
def test_import_export_round_trip(tmp_path, arch):
    theirs = synthetic(arch)
    src = tmp_path / "backbone.pth"
    torch.save(theirs, src)
    summary = I.import_insightface(src, arch, tmp_path / "run")
    assert summary["backbone"] == I.ARCHS[arch] and summary["embedding_size"] == 512
    assert summary["tensors"] == TENSORS[arch] and summary["parameters"] == PARAMETERS[arch]
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["imported"]["sha256"] == I.file_sha256(src) and ckpt["step"] == 0
    assert ckpt["preprocess"] == I.PREPROCESS
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]

    model, preprocess = load_model(tmp_path / "run")
    direct = build_backbone(I.ARCHS[arch]).eval()
    direct.load_state_dict(I.facelab_state(theirs, arch, "x"), strict=True)
    x = faces()
    with torch.no_grad():
        got = model(x)  # [2, 512]
        assert torch.equal(got, direct(x))
    ref = reference_forward(arch, theirs, x)
    assert got.abs().mean() > 1e-2 and torch.allclose(got, ref, rtol=1e-4, atol=1e-5)

    result = I.export_insightface(tmp_path / "run", tmp_path / "back.pth")
    assert result["arch"] == arch and result["tensors"] == TENSORS[arch]
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in back.items()] == table(arch)
    for name, tensor in theirs.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name


def test_r50_maps_both_ways_in_memory():
    theirs = synthetic("r50")
    ours = I.facelab_state(theirs, "r50", "x")
    model = build_backbone("iresnet50")
    model.load_state_dict(ours, strict=True)
    back = I.insightface_state(model.state_dict(), "r50")
    assert list(back) == list(theirs)
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)
    x = faces(1)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), reference_forward("r50", theirs, x),
                              rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["r18", "mbf"])
def test_embedding_size_read_from_the_weights(tmp_path, arch):
    theirs = synthetic(arch, d=128)
    torch.save(theirs, tmp_path / "b.pth")
    assert I.import_insightface(tmp_path / "b.pth", arch, tmp_path / "run")["embedding_size"] == 128
    model, _ = load_model(tmp_path / "run")
    x = faces()
    assert torch.allclose(model(x), reference_forward(arch, theirs, x), rtol=1e-4, atol=1e-5)


def test_module_prefix_counters_and_resume_checkpoints_accepted(tmp_path):
    theirs = synthetic("mbf")
    plain = I.facelab_state(theirs, "mbf", "x")
    prefixed = I.facelab_state({f"module.{k}": v for k, v in theirs.items()}, "mbf", "x")
    assert list(prefixed) == list(plain) and all(prefixed[k] is plain[k] for k in plain)
    old = {k: v for k, v in theirs.items() if not k.endswith("num_batches_tracked")}
    filled = I.facelab_state(old, "mbf", "x")
    assert list(filled) == list(plain) and int(filled["stem.1.num_batches_tracked"]) == 0
    # arcface_torch's checkpoint_gpu_N.pt (save_all_states)
    torch.save({"epoch": 3, "global_step": 10, "state_dict_backbone": theirs},
               tmp_path / "checkpoint_gpu_0.pt")
    assert I.import_insightface(tmp_path / "checkpoint_gpu_0.pt", "mbf", tmp_path / "r")["tensors"]


def one_line_error(call, *args) -> str:
    with pytest.raises(FacelabError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_wrong_arch_names_the_first_bad_tensor(tmp_path):
    r50 = synthetic("r50", cheap=True)
    msg = one_line_error(I.facelab_state, r50, "r100", "backbone.pth")
    assert msg.startswith("backbone.pth: 450 of the 925 tensors of insightface r100 are missing: "
                          "'layer2.4.bn1.weight', 'layer2.4.bn1.bias'")
    assert msg.endswith("the tensors are those of insightface r50: is --arch right?")
    msg = one_line_error(I.facelab_state, r50, "r18", "backbone.pth")
    assert "288 tensor(s) that insightface r18 does not have: 'layer1.2.bn1.weight'" in msg
    mbf = synthetic("mbf", cheap=True)
    msg = one_line_error(I.facelab_state, mbf, "mbf_large", "b.pth")
    assert msg == ("b.pth: tensor 'layers.0.layers.0.weight' has shape [128, 3, 3, 3], insightface "
                   "mbf_large expects [256, 3, 3, 3]; the tensors are those of insightface mbf: is "
                   "--arch right?")
    bad = synthetic("r18", cheap=True)
    bad["layer3.0.conv1.weight"] = torch.zeros(256, 64, 3, 3)
    msg = one_line_error(I.facelab_state, bad, "r18", "b.pth")
    assert msg == ("b.pth: tensor 'layer3.0.conv1.weight' has shape [256, 64, 3, 3], insightface "
                   "r18 expects [256, 128, 3, 3]; is --arch right?")
    # through a file: r18 weights imported as mbf; nothing is written
    torch.save(synthetic("r18", cheap=True), tmp_path / "r18.pth")
    msg = one_line_error(I.import_insightface, tmp_path / "r18.pth", "mbf", tmp_path / "out")
    assert msg.startswith(f"{tmp_path / 'r18.pth'}: 333 of the 333 tensors of insightface mbf are "
                          "missing: 'layers.0.layers.0.weight'")
    assert msg.endswith("the tensors are those of insightface r18: is --arch right?")
    assert not (tmp_path / "out").exists()
    assert "unknown insightface arch 'r51'" in one_line_error(I.import_insightface,
                                                              tmp_path / "r18.pth", "r51",
                                                              tmp_path / "out")


def test_unreadable_files_are_named(tmp_path):
    src = tmp_path / "backbone.pth"
    torch.save(synthetic("mbf"), src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    msg = one_line_error(I.import_insightface, src, "mbf", tmp_path / "out")
    assert msg.startswith(f"{src}: cannot read insightface checkpoint (")
    assert not (tmp_path / "out").exists()
    assert one_line_error(I.read_insightface, tmp_path / "nope.pth") == \
        f"{tmp_path / 'nope.pth'}: no such file"
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, src)
    assert "entry 'epoch' holds int, not a tensor" in one_line_error(I.read_insightface, src)
    torch.save([torch.zeros(1)], src)
    assert "not a state dict (holds a list)" in one_line_error(I.read_insightface, src)


def test_output_folder_rules(tmp_path):
    src = tmp_path / "b.pth"
    torch.save(synthetic("mbf"), src)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "not empty" in one_line_error(I.import_insightface, src, "mbf", busy)
    assert (busy / "notes.txt").read_text() == "mine"
    out = tmp_path / "run"
    I.import_insightface(src, "mbf", out)
    torch.save(synthetic("mbf", seed=1), src)
    I.import_insightface(src, "mbf", out)  # an earlier import is replaced
    assert load_checkpoint(out)["imported"]["sha256"] == I.file_sha256(src)
    (tmp_path / "empty").mkdir()
    I.import_insightface(src, "mbf", tmp_path / "empty")
    (out / "eval").mkdir()
    assert "earlier insightface import and other files (eval)" in one_line_error(
        I.import_insightface, src, "mbf", out)


def facelab_run(path: Path, backbone: str, **model) -> Path:
    cfg = Config(model=ModelConfig(backbone=backbone, embedding_size=8, **model))
    save_checkpoint(path / "checkpoint.pt", {"model": build_model(cfg).state_dict(),
                                             "config": config_to_dict(cfg),
                                             "preprocess": I.PREPROCESS})
    return path


def test_export_refusals(tmp_path):
    tiny = facelab_run(tmp_path / "tiny", "tiny", kwargs={"width": 4})
    msg = one_line_error(I.export_insightface, tiny, tmp_path / "x.pth")
    assert "backbone 'tiny' has no insightface counterpart" in msg
    cfg = Config(model=ModelConfig(backbone="iresnet18", groupface=GroupFaceConfig(groups=4)))
    save_checkpoint(tmp_path / "gf.pt", {"model": {}, "config": config_to_dict(cfg),
                                         "preprocess": I.PREPROCESS})
    assert "wrapped in GroupFace" in one_line_error(I.export_insightface, tmp_path / "gf.pt",
                                                    tmp_path / "x.pth")
    run = facelab_run(tmp_path / "mbf", "mbf")
    assert "is insightface mbf, not r50" in one_line_error(I.export_insightface, run,
                                                           tmp_path / "x.pth", "r50")
    assert "is a folder" in one_line_error(I.export_insightface, run, tmp_path)
    assert "is the facelab checkpoint" in one_line_error(I.export_insightface, run,
                                                         run / "checkpoint.pt")
    assert not (tmp_path / "x.pth").exists()
    assert I.export_insightface(run, tmp_path / "x.pth", "mbf")["embedding_size"] == 8


def test_export_of_a_model_without_affine_final_bn():
    model = build_backbone("mbf", embedding_size=8, fc_bn="none")
    state = I.insightface_state(model.state_dict(), "mbf")
    assert torch.equal(state["features.layers.3.weight"], torch.ones(8))
    assert torch.equal(state["features.layers.3.bias"], torch.zeros(8))
    broken = {k: v for k, v in build_backbone("mbf").state_dict().items() if k != "conv.0.weight"}
    msg = one_line_error(I.insightface_state, broken, "mbf", "ck.pt")
    assert msg == ("ck.pt: 1 of the 333 tensors of facelab mbf are missing: 'conv.0.weight'; is "
                   "this a mbf checkpoint (insightface mbf)?")


def test_guess_arch():
    assert I.guess_arch(synthetic("r18", cheap=True)) == "r18"
    prefixed = {f"module.{k}": v for k, v in synthetic("mbf_large", cheap=True).items()}
    assert I.guess_arch(prefixed) == "mbf_large"
    assert I.guess_arch({"conv1.weight": torch.zeros(1)}) is None
