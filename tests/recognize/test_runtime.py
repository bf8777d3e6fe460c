"""facelab.recognize.runtime: the prepared CPU paths embed as the plain model does (fp32 to float32
rounding, bf16 to bf16 rounding), leave the caller's model alone, refuse bad precisions, and "auto"
takes bf16 exactly where the CPU computes it natively (not when the user holds torch to AVX2).

Tolerances. fp32: BatchNorm folding and channels_last change the order of float32 operations
only, so the embeddings agree to tests/references/float_paths.DIST_TOL (cosines of L2-normalised
embeddings of two float32 paths). bf16: each operand of a convolution or linear layer is rounded to
8 significant bits, a relative error of at most u = 2^-8 = 3.9e-3, with float32 accumulation; the
roundings of the L layers on the way are independent, so the embedding moves by a relative L2
error e of at most about u * sqrt(L) (0.03 for mobilefacenet's ~55 layers), and 1 - cos = e^2 / 2,
at most about 4e-4. The bound cos > 0.99 allows e up to 0.14: a 5x margin on e for the
amplification of a random, untrained network. (Measured: 1 - cos <= 5e-6 for both models here,
e about 3e-3: the roundings also average out over the embedding's dimensions.)
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tests.references.float_paths import DIST_TOL
from torch import nn

from facelab.backbones import build_backbone
from facelab.errors import FacelabError
from facelab.eval.embed import embed_images
from facelab.onnx_model import OnnxEmbedder
from facelab.recognize import runtime
from facelab.recognize.runtime import PRECISIONS, CpuEmbedder, native_bf16, prepare

BF16_MIN_COS = 0.99  # see the module docstring
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.fixture(autouse=True)
def _denormals_back():
    """prepare() flushes denormals process wide; give the next test torch's default back."""
    yield
    torch.set_flush_denormal(False)


def _net(name: str) -> nn.Module:
    """A small network in eval mode with random BatchNorm statistics and affines, so that folding
    them into the convolutions is not the identity."""
    torch.manual_seed(0)
    kwargs = {"width": 4} if name == "tiny" else {}
    model = build_backbone(name, embedding_size=16, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            if m.affine:
                m.weight.data.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


def _crops(n: int = 3, seed: int = 2) -> torch.Tensor:
    """Preprocessed crops float32 [n, 3, 112, 112] in the range of normalised pixels."""
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of a [B, d] with the same row of b [B, d], in float64."""
    return nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


@pytest.mark.parametrize("name", ["tiny", "mobilefacenet"])
def test_fp32_path_embeds_as_the_plain_model(name):
    model, x = _net(name), _crops()
    with torch.no_grad():
        ref = model(x)  # [3, 16]
    net, used = prepare(model, "fp32")
    assert used == "fp32" and isinstance(net, CpuEmbedder)
    out = net(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (1 - _cos(out, ref)).abs().max() <= DIST_TOL
    # and through embed_images, as the Recognizer uses it: flip, sum, L2-normalise
    images = ((x[:2].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()  # [2, 112, 112, 3]
    got, want = embed_images(net, images), embed_images(model, images)
    assert np.abs((got * want).sum(1) - 1).max() <= DIST_TOL


@pytest.mark.parametrize("name", ["tiny", "mobilefacenet"])
def test_bf16_path_is_within_bf16_rounding_of_fp32(name):
    model, x = _net(name), _crops()
    with torch.no_grad():
        ref = model(x)
    net, used = prepare(model, "bf16")
    out = net(x)
    assert used == "bf16" and out.dtype == torch.float32 and out.shape == ref.shape
    assert not torch.equal(out, ref)  # it did run in bf16
    assert _cos(out, ref).min() > BF16_MIN_COS


def test_bad_precision_is_a_clear_error():
    with pytest.raises(FacelabError, match=r"precision 'fp16' is not one of auto, fp32, bf16"):
        prepare(_net("tiny"), "fp16")
    assert PRECISIONS == ("auto", "fp32", "bf16")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_the_callers_model_is_unchanged(precision, monkeypatch):
    monkeypatch.setattr(runtime, "onnx_installed", lambda: False)  # auto: no export needed here
    model, x = _net("mobilefacenet"), _crops(2)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    model.train()
    prepare(model, precision)
    assert model.training and all(m.training for m in model.modules())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k, v in state.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    assert all(p.is_contiguous() for p in model.parameters())  # no channels_last left behind
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_auto_takes_bf16_iff_native(monkeypatch):
    model = _net("tiny")
    used = prepare(model, "auto")[1]
    if native_bf16():
        assert used == "bf16"
    else:
        assert used in ("fp32", "onnxruntime-fp32")
    # both branches on any CPU
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert prepare(model, "auto")[1] == "bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "onnx_installed", lambda: False)
    assert prepare(model, "auto")[1] == "fp32"


def test_native_bf16_follows_the_hardware():
    flags = runtime.cpu_flags()
    if native_bf16() and flags:
        assert "avx512_bf16" in flags or "amx_bf16" in flags


def test_avx2_forced_is_not_native_bf16_and_auto_stays_fp32():
    code = (
        "from facelab.backbones import build_backbone\n"
        "from facelab.recognize import runtime\n"
        "runtime.onnx_installed = lambda: False  # no export: the torch fp32 path\n"
        "used = runtime.prepare(build_backbone('tiny', embedding_size=16, width=4), 'auto')[1]\n"
        "print(runtime.native_bf16(), used, runtime._isa_cap())\n"
    )
    env = {**os.environ, **AVX2_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split(maxsplit=2)
    assert out[:2] == ["False", "fp32"], out
    assert out[2].strip() != "None", out  # the cap is named, whatever the hardware


def test_an_exported_model_passes_through():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, x = _net("tiny"), _crops(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ort = runtime.onnx_embedder(model)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(ort, OnnxEmbedder)
    for precision in ("auto", "fp32"):
        net, used = prepare(ort, precision)
        assert net is ort and used == "onnxruntime-fp32"
    with pytest.raises(FacelabError, match="runs in onnxruntime fp32"):
        prepare(ort, "bf16")
    with torch.no_grad():
        assert (1 - _cos(ort(x), model(x))).abs().max() <= DIST_TOL  # two float32 paths


def test_folding_reads_only_plain_sequentials():
    class Reordered(nn.Sequential):
        def forward(self, x):
            return self[0](self[1](x))

    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4),
                        nn.Conv2d(4, 4, 1), Reordered(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))).eval()
    assert runtime._fold_batchnorm(seq) == 1  # BN after conv only; not BN->conv, not a subclass
    assert isinstance(seq[1], nn.Identity) and isinstance(seq[2], nn.BatchNorm2d)
    assert isinstance(seq[4][1], nn.BatchNorm2d)


def test_a_prepared_model_is_not_prepared_twice():
    net, used = prepare(_net("tiny"), "bf16")
    assert prepare(net, "auto") == (net, "bf16") and prepare(net, "bf16") == (net, "bf16")
    with pytest.raises(FacelabError, match="already prepared in bf16"):
        prepare(net, "fp32")


def test_auto_without_bf16_keeps_its_choice(monkeypatch, tmp_path, caplog):
    """The first load times torch against onnxruntime and keeps the outcome; the next loads take it
    without exporting again; a damaged record is measured again."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    model, x = _net("tiny"), _crops(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first, used = prepare(model, "auto")
        records = list((tmp_path / "facelab" / "runtime").glob("*.json"))
        assert len(records) == 1 and json.loads(records[0].read_text())["choice"] == used
        assert records[0].with_suffix(".onnx").exists() == (used == "onnxruntime-fp32")

        def no_export(*args, **kwargs):
            raise AssertionError("exported again")

        monkeypatch.setattr(runtime, "onnx_export", no_export)
        again, used_again = prepare(model, "auto")
        assert used_again == used
        with torch.no_grad():  # the kept path embeds as the first did (the same export or copy)
            np.testing.assert_allclose(again(x).numpy(), first(x).numpy(), atol=DIST_TOL)
        records[0].write_text("{not json")
        monkeypatch.setattr(runtime, "onnx_export", lambda *a, **k: (_ for _ in ()).throw(
            FacelabError("export refused here")))
        with caplog.at_level("WARNING", logger="facelab.recognize.runtime"):
            assert prepare(model, "auto")[1] == "fp32"  # measured again: no export, torch fp32
        assert "export refused here" in caplog.text
    finally:
        torch.set_num_threads(threads)


def test_a_given_digest_keys_the_kept_choice_as_the_weights_do():
    """The Recognizer hands prepare the digest it already computed: the key is the one the
    weights themselves give, so nothing is hashed twice and nothing kept is missed."""
    from facelab.model import weights_digest
    from facelab.recognize import runtime_cache

    model = _net("tiny")
    digest = weights_digest(model.state_dict())
    assert (runtime_cache.cache_key(model, (112, 112), digest)
            == runtime_cache.cache_key(model, (112, 112)))
