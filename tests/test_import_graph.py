"""The import graph of src/facelab: no cycle between files or packages, every import to the same
layer or a lower one, and facelab imports at the top of modules (lazy only where listed, with why).
Reads the sources with `ast` (nothing is imported), so a cycle hidden behind a lazy import counts."""

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first; a module may import from its own layer or a lower one (README, "Layout").
LAYERS = [
    {"__init__", "errors", "io", "images", "jsonfile", "config", "configcheck"},
    {"align", "backbones", "data"},
    {"distributed", "heads", "losses", "onnx_model", "model"},
    {"eval", "export", "interop"},
    {"distill", "train", "clean", "recognize"},
    {"demo", "experiments", "serve", "cli", "__main__"},
]
# Imports inside functions that are allowed, and why: (importing module, imported module prefix).
LAZY = {
    ("facelab.cli", "facelab"): "each sub-command loads its module only when run: a light --help",
    ("facelab", "facelab.recognize"): "`from facelab import Recognizer` without torch on `import "
    "facelab`",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "facelab").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _target(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mods: dict[str, Path]) -> list[tuple[str, str, bool, int]]:
    """(importer, imported module, inside a function, line) for every facelab import."""
    found = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = _target(name, mods) if name.startswith("facelab") else None
                if target and target != mod:
                    found.append((mod, target, id(node) not in top, node.lineno))
    return found


def _layer(mod: str) -> int:
    part = mod.split(".")[1] if "." in mod else "__init__"
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{mod}: its package {part!r} is in no layer of LAYERS")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _graph(level: int) -> dict[str, set[str]]:
    """Import edges between modules cut to `level` name parts. An allowed lazy import (LAZY) runs
    when its function is called, after every module has loaded, so it cannot close a cycle."""
    edges = defaultdict(set)
    for a, b, inner, _ in _imports(_modules()):
        if inner and any(a == m and b.startswith(p) for m, p in LAZY):
            continue
        a, b = ".".join(a.split(".")[:level]), ".".join(b.split(".")[:level])
        if a != b:
            edges[a].add(b)
            edges[b]
    return edges


def test_no_cycle_between_files():
    assert _cycles(_graph(99)) == []


def test_no_cycle_between_packages():
    assert _cycles(_graph(2)) == []


def test_imports_go_down_the_layers():
    upward = [f"{a}:{line} imports {b}" for a, b, _, line in _imports(_modules())
              if a != "facelab" and _layer(b) > _layer(a)]
    assert upward == []


def test_facelab_imports_at_the_top_of_modules():
    lazy = [f"{a}:{line} imports {b} inside a function" for a, b, inner, line in _imports(_modules())
            if inner and not any(a == m and b.startswith(p) for m, p in LAZY)]
    assert lazy == []


def test_the_checks_can_fail():
    """The graph walk finds a known edge and the cycle finder finds a planted cycle."""
    assert ("facelab.train.loop", "facelab.train.task") in {(a, b) for a, b, _, _ in _imports(_modules())}
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _layer("facelab.cli") > _layer("facelab.train.loop") > _layer("facelab.heads.head")
