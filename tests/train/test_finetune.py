"""Fine-tuning (facelab.train.finetune): model.init_from starts a new run from another model's
backbone, train.freeze leaves parts of it untrained; both on the tiny backbone and tiny data."""

import json

import pytest
import torch
from tests.references.tiny_runs import recipe

from facelab.config import config_from_dict, config_to_dict, load_config
from facelab.data.transforms import PREPROCESS_DEFAULT
from facelab.errors import FacelabError
from facelab.model import build_model, load_checkpoint, save_checkpoint, weights_digest
from facelab.train import loop
from facelab.train.finetune import is_under
from facelab.train.loop import train
from facelab.train.run import RESUMABLE

TINY = {"backbone": "tiny", "embedding_size": 16, "kwargs": {"width": 4}}
FROZEN = ["body.0", "body.1"]


def _cfg(root, out, init_from=None, freeze=(), steps=3, **train_section):
    data = recipe(root / "train", out, steps=steps, freeze=list(freeze), **train_section)
    data["model"]["init_from"] = None if init_from is None else str(init_from)
    return config_from_dict(data)


def _write_source(path, model=None, preprocess=None, drop=(), reshape=(), add=()):
    """A checkpoint as an importer writes it (model, config, preprocess; a partial config), from a
    freshly built network of `model` (default TINY), optionally tampered with."""
    model = {**TINY, **(model or {})}
    state = build_model(config_from_dict({"model": model})).state_dict()
    for name in drop:
        del state[name]
    for name in reshape:
        state[name] = torch.zeros(3, 3)
    for name in add:
        state[name] = torch.zeros(1)
    pre = {**PREPROCESS_DEFAULT, **(preprocess or {})}
    save_checkpoint(path, {"model": state, "config": {"model": model}, "preprocess": pre})
    return path


def _clone(state):
    return {k: v.detach().clone() for k, v in state.items()}


@pytest.fixture
def first_step(monkeypatch):
    """The task's backbone and head state, and its optimiser's parameters and the backbone's
    module modes, as each run's first step begins (before its forward)."""
    seen = []
    real = loop._step

    def spy(run, batch, per_epoch):
        task = run.state.task
        if run.state.step == 0:
            params = {id(p) for g in run.state.optimizer.param_groups for p in g["params"]}
            seen.append({
                "backbone": _clone(task.backbone.state_dict()),
                "head": _clone(task.head.state_dict()),
                "optimised": {n for n, p in task.backbone.named_parameters() if id(p) in params},
                "training": {n: m.training for n, m in task.backbone.named_modules()},
            })
        return real(run, batch, per_epoch)

    monkeypatch.setattr(loop, "_step", spy)
    return seen


@pytest.fixture(scope="module")
def source_run(tiny_data, tmp_path_factory):
    """A tiny run trained 3 steps: the model the fine-tuning runs start from."""
    out = tmp_path_factory.mktemp("source") / "run"
    train(_cfg(tiny_data, out))
    return out


def _equal(a, b, names):
    return all(torch.equal(a[n], b[n]) for n in names)


def test_new_run_starts_from_source_and_records_it(tiny_data, source_run, tmp_path, first_step):
    source = load_checkpoint(source_run)
    summary = train(_cfg(tiny_data, tmp_path / "ft", init_from=source_run))
    start = first_step[0]
    # every tensor of the backbone, BN statistics included, is the source's before the first step
    assert start["backbone"].keys() == source["model"].keys()
    assert _equal(start["backbone"], source["model"], source["model"])
    ckpt = load_checkpoint(tmp_path / "ft")
    record = {"path": str((source_run / "checkpoint.pt").resolve()),
              "weights_digest": weights_digest(source["model"])}
    assert ckpt["init_from"] == record and ckpt["step"] == 3
    assert not _equal(ckpt["model"], source["model"], source["model"])  # it trained
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["train"]["init_from"] == summary["train"]["init_from"] == record
    assert metrics["train"]["frozen_parameters"] == 0
    # the head is new: drawn as in the same run from scratch, whose backbone is not the source's
    train(_cfg(tiny_data, tmp_path / "scratch"))
    scratch = first_step[1]
    assert _equal(start["head"], scratch["head"], scratch["head"])
    assert not _equal(scratch["backbone"], source["model"], source["model"])
    assert load_checkpoint(tmp_path / "scratch")["init_from"] is None


@pytest.mark.parametrize("model,key,values", [
    ({"embedding_size": 32}, "model.embedding_size", ("32", "16")),
    ({"backbone": "mobilefacenet", "kwargs": {}}, "model.backbone", ("'mobilefacenet'", "'tiny'")),
    ({"kwargs": {"width": 8}}, "model.kwargs.width", ("8", "4")),
    ({"kwargs": {"width": 4, "depth": 1}}, "model.kwargs.depth", ("1", "0")),
    ({"groupface": {"groups": 4}}, "model.groupface.groups", ("4", "0")),
])
def test_other_architecture_is_refused_naming_the_field(tiny_data, tmp_path, model, key, values):
    src = _write_source(tmp_path / "src.pt", model)
    with pytest.raises(FacelabError, match=r"model\.init_from") as e:
        train(_cfg(tiny_data, tmp_path / "ft", init_from=src))
    assert key in str(e.value) and all(v in str(e.value) for v in values)
    assert not (tmp_path / "ft").exists()  # refused before the run folder was made


def test_defaults_and_loss_weights_are_not_architecture(tiny_data, tmp_path):
    # the tiny backbone's default depth given explicitly, and another GroupFace loss weight
    src = _write_source(tmp_path / "src.pt", {"kwargs": {"width": 4, "depth": 0},
                                              "groupface": {"lam": 0.5}})
    train(_cfg(tiny_data, tmp_path / "ft", init_from=src, steps=1))
    assert load_checkpoint(tmp_path / "ft")["step"] == 1


@pytest.mark.parametrize("tamper,match", [
    ({"drop": ["neck.fc.bias"]}, "lack 'neck.fc.bias'"),
    ({"add": ["extra.weight"]}, "hold 'extra.weight'"),
    ({"reshape": ["neck.fc.weight"]}, r"'neck.fc.weight' has shape \(3, 3\)"),
])
def test_weights_that_do_not_fit_name_the_tensor(tiny_data, tmp_path, tamper, match):
    src = _write_source(tmp_path / "src.pt", **tamper)
    with pytest.raises(FacelabError, match=match):
        train(_cfg(tiny_data, tmp_path / "ft", init_from=src))
    assert not (tmp_path / "ft").exists()


def test_missing_source_fails_before_anything(tiny_data, tmp_path):
    with pytest.raises(FacelabError, match=r"model\.init_from: .*nowhere.*no checkpoint found"):
        train(_cfg(tiny_data, tmp_path / "ft", init_from=tmp_path / "nowhere"))
    assert not (tmp_path / "ft").exists()


def test_preprocessing_adopted_or_refused(tiny_data, tmp_path):
    bgr = {"colour": "BGR", "mean": [0.4, 0.5, 0.6], "std": 0.25}
    src = _write_source(tmp_path / "bgr.pt", preprocess=bgr)
    train(_cfg(tiny_data, tmp_path / "ft", init_from=src, steps=1))
    assert load_checkpoint(tmp_path / "ft")["preprocess"] == {**PREPROCESS_DEFAULT, **bgr}
    big = _write_source(tmp_path / "big.pt", preprocess={"size": 128})
    with pytest.raises(FacelabError, match=r"preprocess\.size is 128, this run's is 112"):
        train(_cfg(tiny_data, tmp_path / "ft2", init_from=big))
    assert not (tmp_path / "ft2" / "config.yaml").exists()  # data read, nothing written


def test_freeze_keeps_frozen_parts_bit_identical(tiny_data, source_run, tmp_path, first_step):
    source = load_checkpoint(source_run)["model"]
    summary = train(_cfg(tiny_data, tmp_path / "ft", init_from=source_run, freeze=FROZEN, steps=4))
    after = load_checkpoint(tmp_path / "ft")["model"]
    frozen = [n for n in source if is_under(n, FROZEN)]
    free = [n for n in source if not is_under(n, FROZEN)]
    # weights and BN statistics (running mean/var, batches tracked) of the frozen parts
    assert any("running_mean" in n for n in frozen) and any("num_batches" in n for n in frozen)
    assert _equal(after, source, frozen)
    moved = [n for n in free if not torch.equal(after[n], source[n])]
    assert {"body.2.0.weight", "body.2.1.bias", "body.2.1.running_mean", "neck.fc.weight"} <= set(
        moved)
    start = first_step[0]
    assert not any(is_under(n, FROZEN) for n in start["optimised"])  # not in the optimiser
    assert "body.2.0.weight" in start["optimised"]
    assert start["training"]["body.0.1"] is False and start["training"]["body.2.1"] is True
    counts = sum(source[n].numel() for n in frozen if n.endswith(("weight", "bias")))
    assert summary["train"]["frozen_parameters"] == counts


@pytest.mark.parametrize("entry", ["body.9", "bod", "neck.fc.weight.x"])
def test_unknown_freeze_entry_is_refused_naming_it(tiny_data, tmp_path, entry):
    with pytest.raises(FacelabError, match=r"train\.freeze\[1\]") as e:
        train(_cfg(tiny_data, tmp_path / "r", freeze=["neck", entry]))
    assert repr(entry) in str(e.value) and "body, neck" in str(e.value)
    assert not (tmp_path / "r").exists()


def test_resume_keeps_its_own_weights_and_records(tiny_data, tmp_path):
    src = _write_source(tmp_path / "src.pt", preprocess={"colour": "BGR"})
    digest = weights_digest(load_checkpoint(src)["model"])

    def cfg(out, init_from=src):
        return _cfg(tiny_data, out, init_from=init_from, freeze=["body.0"], steps=4, amp="none")

    train(cfg(tmp_path / "full"))
    part = train(cfg(tmp_path / "part"), stop_at=2)
    assert part["train"]["complete"] is False
    other = _write_source(tmp_path / "other.pt")
    with pytest.raises(FacelabError, match=r"config model\.init_from was .*src\.pt"):
        train(cfg(tmp_path / "part", init_from=other), resume=True)
    src.unlink()  # a resume never reads the source again
    summary = train(cfg(tmp_path / "part"), resume=True)
    full, resumed = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert _equal(full["model"], resumed["model"], full["model"])  # exact resume
    assert resumed["preprocess"]["colour"] == "BGR"  # trains as it started
    assert resumed["init_from"] == {"path": str(src.resolve()), "weights_digest": digest}
    assert summary["train"]["init_from"] == resumed["init_from"]


def test_config_keys(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model:\n  init_from: runs/base\ntrain:\n  freeze: [stem, stages.0]\n")
    cfg = load_config(p)
    assert cfg.model.init_from == "runs/base" and cfg.train.freeze == ["stem", "stages.0"]
    defaults = config_to_dict(config_from_dict({}))
    assert defaults["model"]["init_from"] is None and defaults["train"]["freeze"] == []
    assert "model.init_from" not in RESUMABLE and "train.freeze" not in RESUMABLE
    with pytest.raises(FacelabError, match="model.init_from: '' is invalid"):
        config_from_dict({"model": {"init_from": ""}})
    for bad in ("", "a..b", ".stem", "stem "):
        with pytest.raises(FacelabError, match=r"train\.freeze\[0\]"):
            config_from_dict({"train": {"freeze": [bad]}})
    with pytest.raises(FacelabError, match="train.freeze: expected a list"):
        config_from_dict({"train": {"freeze": "stem"}})
    assert is_under("stages.1.0.w", ["stages.1"]) and not is_under("stages.10.w", ["stages.1"])
