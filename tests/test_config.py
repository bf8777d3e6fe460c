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
