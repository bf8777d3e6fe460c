"""`facelab import onnx`, then `facelab eval` of the imported file: the verification result equals
the one computed by hand from the ORIGINAL file (numpy preprocessing, a plain onnxruntime session,
one image per call, flip-fused and L2-normalised embeddings, the same 10-fold protocol)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from facelab.cli import main  # noqa: E402
from facelab.data.pairsets import load_bin, write_bin  # noqa: E402
from facelab.eval.protocols.verification import verify_pairs  # noqa: E402

REFERENCES = Path(__file__).resolve().parents[1] / "references"


class _BgrNet(nn.Module):
    """Nobody's toolkit: takes BGR [1, 3, 112, 112] (x - 127.5) / 128, returns [1, 16]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d((4, 4)), nn.Flatten(), nn.Linear(128, 16))

    def forward(self, x):
        return self.net(x)


def _by_hand(path, images):
    """Embeddings [N, 16] of RGB uint8 images through the original file, computed here."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    for image in images:
        rows = []
        for view in (image, image[:, ::-1]):  # the image and its mirror, summed (flip fusion)
            x = (view[:, :, ::-1].astype(np.float32) - 127.5) / 128.0  # BGR, normalised
            rows.append(session.run(None, {name: x.transpose(2, 0, 1)[None].copy()})[0][0])
        e = rows[0] + rows[1]
        out.append(e / np.linalg.norm(e))
    return np.array(out)


def test_import_an_onnx_file_then_eval_it(tmp_path, capsys):
    src = tmp_path / "other.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_BgrNet().eval(), (torch.zeros(1, 3, 112, 112),), str(src),
                          dynamo=False, input_names=["data"], output_names=["fc1"])  # batch 1
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(40)]
    write_bin(tmp_path / "v.bin", images, [i % 2 == 0 for i in range(20)])
    out = tmp_path / "m.facelab.onnx"
    # (x / 255 - 127.5 / 255) / (128 / 255) = (x - 127.5) / 128, the model's normalisation
    assert main(["import", "onnx", str(src), "--out", str(out), "--colour", "bgr",
                 "--mean", str(127.5 / 255), "--std", str(128 / 255)]) == 0
    # a bare .bin is assumed RGB and normalised (x/255 - 0.5)/0.5: the data check refuses this
    # BGR model's other record until told (facelab.eval.checks.metadata)
    assert main(["eval", str(out), "--pairs", str(tmp_path / "v.bin"),
                 "--out", str(tmp_path / "eval")]) == 2
    assert "colour: model 'BGR', data 'RGB'" in capsys.readouterr().err
    assert main(["eval", str(out), "--pairs", str(tmp_path / "v.bin"), "--allow-mismatch", "all",
                 "--out", str(tmp_path / "eval")]) == 0
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())["pairs"]["v"]
    loaded, same = load_bin(tmp_path / "v.bin")
    emb = _by_hand(src, loaded)
    want = verify_pairs(emb[0::2], emb[1::2], same)
    assert got["accuracy"] == pytest.approx(want["accuracy"])
    assert got["fold_accuracies"] == pytest.approx(want["fold_accuracies"])


@pytest.mark.parametrize("argv, match", [
    (["--out", "x.onnx"], "give --preset NAME or the model's preprocessing"),
    (["--out", "x.onnx", "--preset", "nope"], "nope"),
])
def test_import_onnx_arguments(tmp_path, capsys, argv, match):
    (tmp_path / "a.onnx").write_bytes(b"not onnx")
    assert main(["import", "onnx", str(tmp_path / "a.onnx"), *argv]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("arch, backbone", [("mbf", "mbf"), ("r50", "iresnet50")])
def test_insightface_import_eval_and_export_back(tmp_path, capsys, arch, backbone):
    """A state dict in insightface's names -> facelab import -> eval -> export back: the same
    tensors, and the eval's embeddings are the network's own. (The renaming itself was checked
    against insightface's own model classes, bit-identical outputs, outside this repository; here
    its tables, tests/references/insightface_names, stand for them.)"""
    from facelab.backbones import build_backbone
    from facelab.eval.embed import embed_images
    from facelab.interop.insightface import insightface_state

    torch.manual_seed(0)
    net = build_backbone(backbone).eval()
    theirs = insightface_state(net.state_dict(), arch)  # insightface's names and order
    table = json.loads((REFERENCES / "insightface_names" / f"{arch}.json").read_text())
    assert [[k, list(v.shape)] for k, v in theirs.items()] == [[n, list(sh)] for n, sh in table]
    torch.save(theirs, tmp_path / "backbone.pth")
    run = tmp_path / "run"
    assert main(["import", "insightface", str(tmp_path / "backbone.pth"), "--arch", arch,
                 "--out", str(run)]) == 0
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(40)]
    write_bin(tmp_path / "v.bin", images, [i % 2 == 0 for i in range(20)])  # 10 folds of 2
    assert main(["eval", str(run), "--pairs", str(tmp_path / "v.bin"), "--no-flip",
                 "--out", str(tmp_path / "eval")]) == 0  # no flip: half the r50 passes
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())["pairs"]["v"]
    loaded, same = load_bin(tmp_path / "v.bin")
    emb = embed_images(net, loaded, flip=False)  # the original network, insightface's preprocessing
    want = verify_pairs(emb[0::2], emb[1::2], same)
    assert got["fold_accuracies"] == pytest.approx(want["fold_accuracies"])
    back = tmp_path / "back.pth"
    assert main(["export", str(run), "--format", "insightface", "--out", str(back)]) == 0
    again = torch.load(back, weights_only=True)
    assert list(again) == list(theirs)
    assert all(torch.equal(again[k], theirs[k]) for k in theirs)
    wrong = "r100" if arch == "r50" else "r50"
    assert main(["import", "insightface", str(tmp_path / "backbone.pth"), "--arch", wrong,
                 "--out", str(tmp_path / "wrong")]) == 2
    assert "is --arch right?" in capsys.readouterr().err


def test_fine_tune_from_an_imported_model(tmp_path, tiny_data):
    """facelab import insightface, then facelab train with model.init_from on it: the run starts
    from the imported weights and trains (the fine-tuning rules: tests/train/test_finetune.py)."""
    import yaml
    from tests.references.tiny_runs import recipe

    from facelab.backbones import build_backbone
    from facelab.interop.insightface import insightface_state
    from facelab.model import load_checkpoint

    torch.manual_seed(0)
    state = build_backbone("mbf").state_dict()
    torch.save(insightface_state(state, "mbf"), tmp_path / "backbone.pth")
    assert main(["import", "insightface", str(tmp_path / "backbone.pth"), "--arch", "mbf",
                 "--out", str(tmp_path / "mbf")]) == 0
    cfg = recipe(tiny_data / "train", tmp_path / "ft", steps=2, batch_size=8,
                 extra={"model": {"backbone": "mbf", "embedding_size": 512, "kwargs": {},
                                  "init_from": str(tmp_path / "mbf")}})
    cfg["train"]["freeze"] = ["stem"]
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "ft.yaml")]) == 0
    ckpt = load_checkpoint(tmp_path / "ft")
    assert ckpt["init_from"]["path"] == str((tmp_path / "mbf" / "checkpoint.pt").resolve())
    stem = [k for k in state if k.startswith("stem.")]
    assert stem and all(torch.equal(ckpt["model"][k], state[k]) for k in stem)  # frozen: as imported
    moved = [k for k in state if k.startswith("fc.")]
    assert moved and not all(torch.equal(ckpt["model"][k], state[k]) for k in moved)  # trained


def test_the_cli_lists_every_insightface_arch():
    from facelab.cli import build_parser
    from facelab.interop.insightface import ARCHS

    sub = build_parser()._subparsers._group_actions[0].choices["import"]
    arch = sub._subparsers._group_actions[0].choices["insightface"]._option_string_actions["--arch"]
    assert arch.help.endswith(", ".join(list(ARCHS)[:-1]) + " or " + list(ARCHS)[-1])
