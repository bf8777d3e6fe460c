"""Backbones: registry walk, shapes, MACs against METHODS.md, stage depths, neck BN modes, errors."""

import inspect

import pytest
import torch
from torch import nn

from facelab.backbones import BACKBONES, build_backbone, count_macs, input_size
from facelab.backbones.iresnet import IRBlock
from facelab.backbones.neck import Neck
from facelab.errors import FacelabError

META = torch.device("meta")


def on_meta(name: str, **kwargs) -> nn.Module:
    with META:
        return build_backbone(name, **kwargs)


def test_registry_names():
    expected = {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "mbf", "mbf_large",
                "mobilefacenet", "tiny", "dlib_resnet"}
    assert set(BACKBONES) == expected


def test_input_sizes():
    assert {name: input_size(name) for name in BACKBONES if input_size(name) != 112} == {
        "dlib_resnet": 150}
    with pytest.raises(FacelabError, match="unknown backbone"):
        input_size("resnet50")


def native(name: str, batch: int = 2) -> tuple[int, int, int, int]:
    """[B, 3, S, S] input shape of backbone `name` (S: its native input size)."""
    return (batch, 3, input_size(name), input_size(name))


def takes(name: str, argument: str) -> bool:
    return argument in inspect.signature(BACKBONES[name]).parameters


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("training", [True, False])
def test_every_backbone_shape_on_meta(name, training):
    model = on_meta(name, embedding_size=96).train(training)
    out = model(torch.empty(native(name), device=META))
    assert out.shape == (2, 96)


@pytest.mark.parametrize("name", ["tiny", "mobilefacenet"])
def test_cpu_forward_backward(name):
    torch.manual_seed(0)
    model = build_backbone(name, embedding_size=32)
    x = torch.randn(4, 3, 112, 112)
    out = model(x)  # [4, 32]
    assert out.shape == (4, 32) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # different faces give different embeddings in eval mode, and the batch does not leak between samples
    model.eval()
    with torch.no_grad():
        full = model(x)
        single = model(x[1:2])
    assert torch.allclose(full[1:2], single, atol=1e-4)
    assert not torch.allclose(full[0], full[1])


# dlib_resnet at 150x150, by hand: conv1 72x72x32x(3x7x7); per residual block two 3x3 convs at
# 35 (x3, 32 ch), 17 (64), 8 (128), 4 (256), 2 (256) px (a stride-2 block's first conv at the
# smaller size, its second at the zero-extended larger one); fc 256x128: 270,854,144 MACs.
DLIB_GMACS = 0.270854144


# Forward GMACs at the native input size (112x112, METHODS.md; dlib_resnet 150x150). MobileFaceNet's "0.45" is a FLOP figure: the paper
# (Chen et al. 2018) gives 221 M MAdds and OpenVINO's model zoo 0.449 GFLOPs = 2 x MACs.
@pytest.mark.parametrize(
    "name, gmacs",
    [("iresnet18", 2.6), ("iresnet50", 6.3), ("iresnet100", 12.1), ("mobilefacenet", 0.45 / 2),
     ("dlib_resnet", DLIB_GMACS)],
)
def test_macs_match_methods(name, gmacs):
    assert count_macs(on_meta(name), native(name, 1)) / 1e9 == pytest.approx(gmacs, rel=0.05)


@pytest.mark.parametrize(
    "name, kwargs, mparams",
    [("iresnet50", {}, 43.6), ("iresnet100", {}, 65.1), ("mobilefacenet", {"embedding_size": 128}, 0.99)],
)
def test_parameter_counts_match_published(name, kwargs, mparams):
    n = sum(p.numel() for p in on_meta(name, **kwargs).parameters())
    assert n / 1e6 == pytest.approx(mparams, rel=0.02)


def test_tiny_is_small():
    assert 20e6 <= count_macs(build_backbone("tiny")) <= 60e6
    narrow, wide = build_backbone("tiny", width=16), build_backbone("tiny", width=32)
    assert narrow.neck.bn.num_features == 64 and wide.neck.bn.num_features == 128
    assert count_macs(narrow) < count_macs(wide)


def test_count_macs_by_hand():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 16x16 -> 8x8
    assert count_macs(conv, (1, 3, 16, 16)) == 8 * 8 * 8 * (3 * 3 * 3)
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_macs(depthwise, (2, 8, 5, 5)) == 2 * 8 * 5 * 5 * 9
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3))
    assert count_macs(mlp, (5, 3, 2, 2)) == 5 * (12 * 4 + 4 * 3)


class DataDependent(nn.Module):
    """Reads a value (impossible on meta), so count_macs must fall back to a CPU forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(x) * float(x.abs().sum() >= 0)


def test_count_macs_cpu_fallback():
    model = DataDependent().train()
    assert count_macs(model, (3, 6)) == 3 * 6 * 2
    assert model.training and model.fc.weight.device.type == "cpu"


def test_count_macs_leaves_model_alone():
    model = build_backbone("tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model)
    assert model.training
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, before[k]), k


EXPECTED_DEPTHS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_DEPTHS))
def test_iresnet_stages(name):
    model = on_meta(name)
    assert tuple(len(stage) for stage in model.stages) == EXPECTED_DEPTHS[name]
    assert sum(isinstance(m, IRBlock) for m in model.modules()) == sum(EXPECTED_DEPTHS[name])
    sizes = []
    for stage in model.stages:
        stage.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[1:])))
    model(torch.empty(2, 3, 112, 112, device=META))
    assert sizes == [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    for stage in model.stages:
        first = stage[0]
        assert isinstance(first.shortcut[0], nn.Conv2d) and first.shortcut[0].kernel_size == (1, 1)
        assert first.shortcut[0].stride == (2, 2)
        assert all(isinstance(unit.shortcut, nn.Identity) for unit in stage[1:])


def test_iresnet_unit_order():
    unit = IRBlock(64, 128, stride=2)
    kinds = [type(m) for m in unit.body]
    assert kinds == [nn.BatchNorm2d, nn.Conv2d, nn.BatchNorm2d, nn.PReLU, nn.Conv2d, nn.BatchNorm2d]
    x = torch.randn(2, 64, 8, 8)
    unit.eval()
    assert torch.allclose(unit(x), unit.body(x) + unit.shortcut(x))


def step_with_weight_decay(neck: Neck) -> None:
    params = [p for p in neck.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5, weight_decay=0.1)
    neck(torch.randn(6, 8, 7, 7)).pow(3).sum().backward()
    opt.step()


def test_neck_insightface_bn_frozen_weight():
    torch.manual_seed(0)
    neck = Neck(8, 7, 16, fc_bn="insightface")
    assert not neck.features.weight.requires_grad and neck.features.bias.requires_grad
    bias = neck.features.bias.detach().clone()
    step_with_weight_decay(neck)
    assert torch.equal(neck.features.weight, torch.ones(16))
    assert not torch.equal(neck.features.bias, bias)


def test_neck_none_has_no_bn_params_and_affine_learns_both():
    assert list(Neck(8, 7, 16, fc_bn="none").features.parameters()) == []
    torch.manual_seed(0)
    neck = Neck(8, 7, 16, fc_bn="affine")
    weight, bias = neck.features.weight.detach().clone(), neck.features.bias.detach().clone()
    step_with_weight_decay(neck)
    assert not torch.equal(neck.features.weight, weight) and not torch.equal(neck.features.bias, bias)


def test_neck_matches_hand_computation_in_eval():
    torch.manual_seed(0)
    neck = Neck(4, 3, 5, fc_bn="affine")
    for bn in (neck.bn, neck.features):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    neck.eval()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    neck.double()

    def bn(v, m, shape):  # (v - mean)/sqrt(var + eps) * weight + bias, broadcast along channels
        r = [t.view(shape) for t in (m.running_mean, m.running_var, m.weight, m.bias)]
        return (v - r[0]) / torch.sqrt(r[1] + m.eps) * r[2] + r[3]

    h = bn(x, neck.bn, (1, 4, 1, 1)).reshape(2, 36)
    expected = bn(h @ neck.fc.weight.T + neck.fc.bias, neck.features, (1, 5))
    assert torch.allclose(neck(x), expected)


def test_neck_dropout_and_fc_bn_validation():
    assert Neck(8, 7, 16, dropout=0.4).dropout.p == 0.4
    with pytest.raises(FacelabError, match="fc_bn"):
        build_backbone("iresnet18", fc_bn="frozen")
    with pytest.raises(FacelabError, match="dropout"):
        build_backbone("tiny", dropout=1.5)
    with pytest.raises(FacelabError, match="7x7"):
        build_backbone("tiny")(torch.zeros(2, 3, 96, 96))


@pytest.mark.parametrize("name", sorted(n for n in BACKBONES if takes(n, "fc_bn")))
@pytest.mark.parametrize("fc_bn", ["insightface", "none", "affine"])
def test_fc_bn_reaches_every_backbone(name, fc_bn):
    model = on_meta(name, fc_bn=fc_bn)
    bn = model.features if name in ("mobilefacenet", "mbf", "mbf_large") else model.neck.features
    assert bn.affine == (fc_bn != "none")
    if fc_bn != "none":
        assert bn.weight.requires_grad == (fc_bn == "affine")


def test_build_backbone_errors():
    with pytest.raises(FacelabError, match="unknown backbone 'resnet50'.*iresnet50.*tiny"):
        build_backbone("resnet50")
    with pytest.raises(FacelabError, match="unknown argument.*widht.*width"):
        build_backbone("tiny", widht=16)
    with pytest.raises(FacelabError, match="embedding_size"):
        build_backbone("tiny", embedding_size=0)
    assert build_backbone("tiny", embedding_size=8, width=8).neck.fc.out_features == 8


def test_zero_init_residual_makes_units_identity_like():
    model = build_backbone("iresnet18", zero_init_residual=True).eval()
    unit = model.stages[1][1]
    assert torch.equal(unit.body[-1].weight, torch.zeros(128))
    x = torch.randn(2, 128, 7, 7)
    assert torch.allclose(unit(x), x + unit.body[-1].bias.view(1, -1, 1, 1))
