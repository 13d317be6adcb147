"""The house runs one way: every import of a qrobust module (module level or inside a function) goes to
the same floor or lower, there are no import cycles, and no module imports another module's private name.
Also the size limits of the issue that rebuilt the upper floors: no function over 60 lines or 8
parameters and no module over 400 lines, except those named in README's layout section."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "qrobust"

# floor of each package or top-level module, lowest first (README: "Layout")
FLOORS: dict[str, int] = {
    "errors": 1, "registries": 1, "names": 1, "leftovers": 1, "stats": 1, "io": 1, "version": 1,
    "checks": 2, "config": 2, "schedules": 2,
    "models": 3, "trajectory": 3, "data": 3, "sources": 3, "presets": 3,
    "evaluate": 4, "training": 4, "quant": 4, "monitor": 4, "integrations": 5,
    "geometry": 5, "averaging": 5, "downstream": 5,
    "results": 6,
    "sweeps": 7,
    "reporting": 8,
    "workflows": 9,
    "api": 10,
    "cli": 11, "__main__": 11, "__init__": 11,
}

# functions allowed past the limits, with the reason in README's layout section
LONG_FUNCTIONS: set[str] = set()
WIDE_FUNCTIONS: set[str] = set()
LONG_MODULES: set[str] = set()


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, names, line) for every qrobust import in the file, wherever it stands."""
    mod = _module(path)
    pkg = mod if _is_package(path) else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "qrobust" or target.startswith("qrobust."):
                names = [a.name for a in node.names]
                # "from . import x" may name submodules
                subs = [n for n in names if (SRC.parent / Path(*target.split("."), n)).exists()
                        or (SRC.parent / Path(*target.split("."), n + ".py")).exists()]
                for n in subs:
                    out.append((f"{target}.{n}", [], node.lineno))
                rest = [n for n in names if n not in subs]
                if rest or not subs:
                    out.append((target, rest, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("qrobust"):
                    out.append((a.name, [], node.lineno))
    return out


def _files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return FLOORS["__init__"]
    return FLOORS[parts[1]]


def test_every_module_has_a_floor():
    missing = sorted({_module(p).split(".")[1] for p in _files() if _module(p) != "qrobust"} - set(FLOORS))
    assert not missing, f"give these a floor in FLOORS and README: {missing}"


def test_imports_never_go_up():
    up = []
    for p in _files():
        mod = _module(p)
        if mod == "qrobust":
            continue
        for target, _, line in _imports(p):
            if target != "qrobust" and _floor(target) > _floor(mod):
                up.append(f"{p.relative_to(SRC.parent)}:{line} {mod} (floor {_floor(mod)}) -> {target} "
                          f"(floor {_floor(target)})")
            if target == "qrobust" and mod.split(".")[1] not in ("cli", "__main__"):
                up.append(f"{p.relative_to(SRC.parent)}:{line} {mod} -> the package face qrobust")
    assert not up, "imports that run up:\n" + "\n".join(up)


def _graph() -> dict[str, set[str]]:
    known = {_module(p) for p in _files()}
    g: dict[str, set[str]] = {}
    for p in _files():
        mod = _module(p)
        deps = set()
        for target, _, _ in _imports(p):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            # a package's face (__init__) handing on its own submodules is not a dependency of them
            if target != mod and not mod.startswith(target + "."):
                deps.add(target)
        g[mod] = deps
    return g


def test_no_import_cycles():
    g = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
    bad = []
    for p in _files():
        for target, names, line in _imports(p):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{p.relative_to(SRC.parent)}:{line} imports {target}.{n}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def _functions():
    for p in _files():
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                n = len(params) + bool(a.vararg) + bool(a.kwarg)
                if params and params[0].arg in ("self", "cls"):
                    n -= 1
                yield f"{_module(p)}.{node.name}", node.end_lineno - node.lineno + 1, n


def test_functions_are_short_and_narrow():
    long = [f"{name} ({n} lines)" for name, n, _ in _functions() if n > 60 and name not in LONG_FUNCTIONS]
    wide = [f"{name} ({k} parameters)" for name, _, k in _functions() if k > 8 and name not in WIDE_FUNCTIONS]
    assert not long and not wide, "split these or list them in README with the reason:\n" + "\n".join(long + wide)


def test_modules_are_small():
    big = [f"{_module(p)} ({n} lines)" for p in _files()
           if (n := len(p.read_text().splitlines())) > 400 and _module(p) not in LONG_MODULES]
    assert not big, "split these modules:\n" + "\n".join(big)


@pytest.mark.parametrize("name", sorted(LONG_FUNCTIONS | WIDE_FUNCTIONS | LONG_MODULES))
def test_exceptions_are_listed_in_readme(name):
    readme = (SRC.parents[1] / "README.md").read_text()
    assert f"`{name}`" in readme, f"README's layout section must name {name} and say why"
