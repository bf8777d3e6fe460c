"""The training loop on a CUDA device (marker gpu: skipped without one; run with `pytest -m gpu`).

What only a GPU run can show: the CUDA generator's state travels in the checkpoint (ElasticFace draws its margins
there, so a resumed run equals the uninterrupted one only if it does), and a run with every throughput option on
(bf16, channels_last, pinned-memory workers, Partial FC) trains and leaves a checkpoint that a CPU-only machine
loads and embeds with, close to the GPU's embeddings."""

import pytest
import torch
from tests.references.tiny_runs import make_identity_folder, recipe

from facelab.config import config_from_dict
from facelab.data.transforms import to_input
from facelab.model import CHECKPOINT_NAME, load_checkpoint, load_model, save_checkpoint
from facelab.train.loop import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_identity_folder(tmp_path_factory.mktemp("cuda") / "train", classes=12)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def test_resumed_elasticface_run_on_cuda_equals_the_uninterrupted_one(folder, tmp_path, monkeypatch):
    """Deterministic cuDNN kernels, so that the only difference left would be the margins' draws; a resume
    whose checkpoint lost the CUDA generator state is shown to differ (the check can fail)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    extra = {"head": {"margin": "elasticface_arc", "kwargs": {"s": 16.0}}}
    runs = {name: recipe(folder, tmp_path / name, steps=4, extra=extra, amp="none", device="cuda",
                         cudnn_benchmark=False) for name in ("full", "part", "lost")}
    train(config_from_dict(runs["full"]))
    for name in ("part", "lost"):
        train(config_from_dict(runs[name]), stop_at=2)
    ckpt = load_checkpoint(tmp_path / "lost")
    assert "cuda" in ckpt["rng"]
    del ckpt["rng"]["cuda"]
    save_checkpoint(tmp_path / "lost" / CHECKPOINT_NAME, ckpt)
    for name in ("part", "lost"):
        train(config_from_dict(runs[name]), resume=True)
    full, part, lost = (load_checkpoint(tmp_path / name) for name in ("full", "part", "lost"))
    assert _max_diff(full["model"], part["model"]) < 1e-6 and _max_diff(full["head"], part["head"]) < 1e-6
    assert _max_diff(full["model"], lost["model"]) > 1e-4


def test_throughput_options_train_and_the_checkpoint_serves_a_cpu_machine(folder, tmp_path):
    extra = {"head": {"margin": "arcface", "kwargs": {"s": 16.0}, "sample_rate": 0.5},
             "data": {"workers": 2, "preload": False}}
    cfg = recipe(folder, tmp_path / "run", steps=6, extra=extra, amp="bf16", device="cuda", channels_last=True)
    summary = train(config_from_dict(cfg))
    assert summary["train"]["steps"] == 6
    model, preprocess = load_model(tmp_path / "run")  # map_location cpu
    assert next(model.parameters()).device.type == "cpu"
    images = torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8)
    with torch.no_grad():
        on_cpu = model(to_input(images, preprocess))
        on_gpu = model.cuda()(to_input(images.cuda(), preprocess)).cpu()
    cos = torch.nn.functional.cosine_similarity(on_gpu, on_cpu, dim=1)  # [4]; TF32 convolutions on the GPU
    assert cos.min() > 0.999, cos
