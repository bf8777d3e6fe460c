"""Packaging: every shipped config (src/facelab/configs, subfolders included) is in the wheel's package-data.

setuptools expands each `[tool.setuptools.package-data]` pattern with `glob.glob(pattern, recursive=True)`
relative to the package folder (setuptools/command/build_py.py), so `**` crosses folders and `*` does not;
the test applies the same expansion, without building a wheel.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "facelab"


def _package_data() -> list[str]:
    """The `facelab` package-data patterns of pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-data"]["facelab"]


def _packaged(patterns: list[str]) -> set[Path]:
    """Files under src/facelab that setuptools would pick up for these patterns (recursive glob, files only)."""
    found = {Path(p) for pat in patterns for p in glob.glob(pat, root_dir=PACKAGE, recursive=True)}
    return {p for p in found if (PACKAGE / p).is_file()}


def _configs() -> set[Path]:
    return {p.relative_to(PACKAGE) for p in (PACKAGE / "configs").rglob("*") if p.is_file()}


def test_every_config_file_is_package_data():
    configs = _configs()
    assert any(p.parent.name == "heads" for p in configs), "expected the recipes in configs/heads"
    missing = sorted(map(str, configs - _packaged(_package_data())))
    assert not missing, f"not in [tool.setuptools.package-data] facelab: {missing}"


def test_the_old_non_recursive_glob_misses_the_sub_folder_recipes():
    """The check above is not vacuous: `configs/*.yaml` (the old pattern) leaves the recipes of
    configs/heads/ and configs/insightface/ out."""
    left_out = _configs() - _packaged(["py.typed", "configs/*.yaml"])
    assert {p.parts[1] for p in left_out} == {"heads", "insightface"}
    assert all(len(p.parts) == 3 for p in left_out)


def test_py_typed_is_package_data():
    assert Path("py.typed") in _packaged(_package_data())


def test_the_serve_page_is_package_data():
    """`facelab serve` answers `/` from serve/static: an installed wheel must carry those files."""
    static = {p.relative_to(PACKAGE) for p in (PACKAGE / "serve" / "static").iterdir() if p.is_file()}
    assert Path("serve/static/index.html") in static
    assert static <= _packaged(_package_data())
