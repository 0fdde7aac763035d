"""The package's architecture, checked: imports run one way, from the CLI down to the users and the catalog.

Every import statement in ``simrec/`` counts, including those inside functions and ``TYPE_CHECKING``
blocks (a lazy import is still a dependency). The layer order is written once, here; each subpackage's
docstring says the same in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "simrec"

#: Bottom first. A module may import modules of its own layer and of the layers before it.
LAYERS: list[tuple[str, ...]] = [
    ("simrec.errors", "simrec.version", "simrec.resume"),
    ("simrec.catalog",),
    ("simrec.users",),
    ("simrec.llm",),
    ("simrec.cognition",),
    ("simrec.envs",),
    ("simrec.data",),
    ("simrec.trajectory",),
    ("simrec.recommenders",),
    ("simrec.analysis",),
    ("simrec.evaluation",),
    ("simrec.stress",),
    ("simrec.distributed",),  # grids and populations over Ray workers, built on evaluation and stress
    ("simrec.cli", "simrec.__main__", "simrec.sb3", "simrec.wrappers", "simrec.rllib", "simrec"),  # entry points and facade
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name != "simrec" and module.startswith(name + ".")):
                return i
    raise LookupError(module)


def imports_of(module: str) -> set[str]:
    """simrec modules that ``module`` imports (``from pkg import submodule`` resolves to the submodule)."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES and "." in t:  # `import simrec.llm.client.X` style: nearest module
                t = t.rsplit(".", 1)[0]
            if t in MODULES and t != module:
                out.add(t)
    return out


GRAPH: dict[str, set[str]] = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    missing = []
    for m in MODULES:
        try:
            layer_of(m)
        except LookupError:
            missing.append(m)
    assert not missing, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {missing}"


def test_no_import_goes_up_a_layer() -> None:
    bad = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
           for m, targets in GRAPH.items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components with more than one module are import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles() -> None:
    cycles = strongly_connected(GRAPH)
    assert not cycles, f"import cycles: {cycles}"


def test_cycle_finder_finds_a_cycle() -> None:  # the checks above must be able to fail
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py" and m != "simrec"))
def test_subpackage_docstring_says_what_it_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text(encoding="utf-8"))) or ""
    assert "may import" in doc, f"{package}/__init__.py needs a docstring saying what lives there and what it may import"


def test_every_subpackage_ships_in_the_wheel() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert packages <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(packages - listed)}"
