"""docs/extending.md stays true: every python block in it runs and asserts what it claims.
The registries it extends are restored afterwards."""

import re
from pathlib import Path

import pytest

from facelab.backbones import BACKBONES
from facelab.data.formats import FORMATS
from facelab.eval.protocols import PROTOCOLS
from facelab.heads import MARGINS
from facelab.losses import OBJECTIVES

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
REGISTRIES = [MARGINS, BACKBONES, OBJECTIVES, FORMATS, PROTOCOLS]


@pytest.fixture
def restore_registries():
    saved = [dict(r) for r in REGISTRIES]
    yield
    for registry, before in zip(REGISTRIES, saved, strict=True):
        registry.clear()
        registry.update(before)


def test_the_doc_has_its_examples():
    assert len(BLOCKS) == len(REGISTRIES)  # one worked example per extension point


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, restore_registries):
    sizes = [len(r) for r in REGISTRIES]
    exec(compile(BLOCKS[index], f"{DOC.name} block {index}", "exec"), {"__name__": "extending_doc"})
    assert [len(r) for r in REGISTRIES] != sizes, "the example registered nothing"
