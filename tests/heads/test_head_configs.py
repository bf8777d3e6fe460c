"""Every margin head has a shipped recipe `facelab/configs/heads/<registry key>.yaml`, and every shipped
head recipe loads, resolves by name (`facelab train heads/<name>`) and builds its head."""

from pathlib import Path

import pytest

from facelab import cli
from facelab.config import load_config
from facelab.heads import MARGINS, build_head

HEADS = Path(cli.__file__).parent / "configs" / "heads"
CONFIGS = sorted(p.stem for p in HEADS.glob("*.yaml"))


def test_every_margin_has_a_config():
    missing = sorted(set(MARGINS) - set(CONFIGS))
    assert not missing, f"no configs/heads/<key>.yaml for: {missing}"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_builds_its_head(name):
    path = cli._recipe(f"heads/{name}")
    assert path == HEADS / f"{name}.yaml"
    cfg = load_config(path)
    if name in MARGINS:  # a per-head recipe uses the head it is named after
        assert cfg.head.margin == name
    head = build_head(cfg.head.margin, cfg.model.embedding_size, 10, sub_centers=cfg.head.sub_centers,
                      **cfg.head.kwargs)
    for key, value in cfg.head.kwargs.items():  # the recipe's values reach the margin
        if key != "mode":
            assert getattr(head.margin, key) == pytest.approx(value), key


def test_variants_configure_their_option():
    assert load_config(HEADS / "groupface.yaml").model.groupface.groups == 32
    assert load_config(HEADS / "adam_softmax_hpm.yaml").head.hard_prototypes == 10
    full = load_config(HEADS / "adaptiveface.yaml")
    assert full.head.hard_prototypes == 10 and full.data.adaptive_sampling.enabled
    assert load_config(HEADS / "subcenter_arcface.yaml").head.sub_centers == 3
