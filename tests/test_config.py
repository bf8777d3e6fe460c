import pytest

from facelab.config import Config, apply_overrides, config_from_dict, load_config
from facelab.errors import FacelabError


def test_defaults_and_yaml_types(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optim:\n  lr: 1\n  weight_decay: 5e-4\ntrain:\n  steps: 10\nhead:\n  kwargs: {s: 30}\n")
    cfg = load_config(p)
    assert isinstance(cfg, Config) and cfg.name == "r"
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == pytest.approx(5e-4)  # YAML 1.1 reads 5e-4 as a string
    assert cfg.train.steps == 10 and cfg.head.kwargs == {"s": 30}
    assert cfg.model.backbone == Config().model.backbone


def test_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optim:\n  lr: 0.1\n")
    cfg = load_config(p, ["optim.lr=0.05", "data.val_pairs=[a.bin, b.bin]", "head.kwargs.m=0.3", "train.amp=bf16"])
    assert cfg.optim.lr == 0.05 and cfg.data.val_pairs == ["a.bin", "b.bin"]
    assert cfg.head.kwargs == {"m": 0.3} and cfg.train.amp == "bf16"
    assert cfg.head.sub_centers is None
    assert load_config(p, ["head.sub_centers=3"]).head.sub_centers == 3


@pytest.mark.parametrize(
    "data,msg",
    [
        ({"optim": {"lrr": 1}}, "unknown key 'optim.lrr'"),
        ({"optimm": {}}, "unknown key 'optimm'"),
        ({"train": {"steps": 1.5}}, "train.steps: expected int"),
        ({"train": {"steps": True}}, "train.steps: expected int"),
        ({"data": {"val_pairs": "a.bin"}}, "data.val_pairs: expected a list"),
        ({"optim": 3}, "optim: expected a mapping"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected float"),
        ({"head": {"sub_centers": "three"}}, "head.sub_centers: expected int"),
    ],
)
def test_errors_name_the_key(data, msg):
    with pytest.raises(FacelabError, match=msg.replace("[", r"\[")):
        config_from_dict(data)


def test_bad_override_and_files(tmp_path):
    with pytest.raises(FacelabError, match="expected key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(FacelabError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(FacelabError, match="bad.yaml: invalid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  step: 3\n")
    with pytest.raises(FacelabError, match=r"typo.yaml: config: unknown key 'train.step'"):
        load_config(typo)


@pytest.mark.parametrize(
    ("dotted", "value", "rule"),
    [
        ("optim.name", "sgdd", "must be one of sgd, adamw"),
        ("schedule.name", "cosinus", "must be one of constant, poly, cosine"),
        ("train.amp", "fp8", "must be one of none, bf16, fp16"),
        ("data.sampler", "pkk", "must be one of uniform, pk, siamese"),
        ("objective", "pair", "must be one of head, pairs, head+pairs"),
        ("train.log_every", 0, "must be >= 1"),
        ("train.checkpoint_every", -1, "must be >= 1"),
        ("train.eval_every", -1, "must be >= 0"),
        ("train.steps", 0, "must be >= 1"),
        ("train.steps", -5, "must be >= 1"),
        ("train.status_every", 0.0, "must be a finite number of seconds > 0"),
        ("train.clip_grad_norm", -1.0, "must be a finite number >= 0"),
        ("train.device", "gpu", "must be cpu, cuda, cuda:N or mps"),
        ("train.threads", -1, "must be >= 0"),
        ("optim.lr", -0.1, "must be a finite number > 0"),
        ("optim.lr", 0.0, "must be a finite number > 0"),
        ("optim.lr", float("nan"), "must be a finite number > 0"),
        ("optim.momentum", 1.0, "must be in [0, 1)"),
        ("optim.weight_decay", -1e-4, "must be a finite number >= 0"),
        ("optim.betas", [0.9], "must be two numbers in [0, 1)"),
        ("schedule.warmup_steps", -1, "must be >= 0"),
        ("schedule.power", 0.0, "must be a finite number > 0"),
        ("schedule.min_lr", 1.0, "must be <= optim.lr"),
        ("data.batch_size", 0, "must be >= 1"),
        ("data.workers", -1, "must be >= 0"),
        ("data.pk_k", 1, "must be >= 2"),
        ("data.positive_fraction", 1.5, "must be in [0, 1]"),
        ("model.embedding_size", 0, "must be >= 1"),
        ("head.sub_centers", 0, "must be >= 1"),
        ("seed", -1, "must be in [0, 2**32)"),
    ],
)
def test_every_choice_and_range_is_checked_at_load(dotted, value, rule):
    """One error naming the dotted key, the value and what is allowed, when the config is built."""
    data: dict = {}
    node = data
    *sections, key = dotted.split(".")
    for s in sections:
        node = node.setdefault(s, {})
    node[key] = value
    with pytest.raises(FacelabError) as e:
        config_from_dict(data)
    msg = str(e.value)
    assert msg.startswith(f"config {dotted}: {value!r} is invalid: {rule}"), msg


@pytest.mark.parametrize(("data", "key"), [
    ({"data": {"sampler": "pk", "adaptive_sampling": {"enabled": True}}}, "data.sampler"),
    ({"objective": "pairs", "data": {"adaptive_sampling": {"enabled": True}}}, "data.adaptive_sampling"),
    ({"distill": {"name": "ddl"}, "data": {"adaptive_sampling": {"enabled": True}}}, "data.adaptive_sampling"),
])
def test_incompatible_keys_are_refused_at_load(data, key):
    with pytest.raises(FacelabError, match=f"config {key}"):
        config_from_dict(data)


def test_warmup_longer_than_the_run_warns(caplog):
    config_from_dict({"train": {"steps": 10}, "schedule": {"warmup_steps": 10}})
    assert not caplog.records
    config_from_dict({"train": {"steps": 10}, "schedule": {"warmup_steps": 11}})
    assert "schedule.warmup_steps: 11 is more than train.steps (10)" in caplog.text
