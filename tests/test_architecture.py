"""The package's layering: every module imports only its own layer or the layers below, and no
import cycle exists between modules (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "deepgmm"

# lowest first; a module belongs to the first layer with a prefix of its dotted name
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("deepgmm._version", "deepgmm._validation", "deepgmm._signals", "deepgmm._params", "deepgmm.choices",
              "deepgmm.likelihood", "deepgmm.smoothing", "deepgmm._init", "deepgmm.metrics", "deepgmm.preprocess",
              "deepgmm.memory", "deepgmm.units", "deepgmm.io", "deepgmm.phantom", "deepgmm.datasets", "deepgmm.figures",
              "deepgmm._em_inputs",
              "deepgmm._torch_settings", "deepgmm.progress", "deepgmm.region_metrics", "deepgmm.bias")),
    ("estimators", ("deepgmm.mixture", "deepgmm.field_em", "deepgmm.deep")),
    ("segment", ("deepgmm.segmentation",)),
    ("training", ("deepgmm.training",)),
    ("applications", ("deepgmm.experiments", "deepgmm.demo")),
    ("cli", ("deepgmm.cli", "deepgmm.__main__")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("deepgmm",) + path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The deepgmm modules an ``import``/``from ... import`` statement loads."""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("deepgmm"):
        return []
    out = []
    for alias in node.names:  # "from pkg import submodule" loads the submodule
        sub = f"{target}.{alias.name}"
        if sub in MODULES:
            out.append(sub)
    if not out or target != "deepgmm":
        out.append(target)
    return out


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("deepgmm")}
        elif isinstance(node, ast.ImportFrom):
            found |= set(_resolve(module, path, node))
    # the root package only re-exports names lazily; importing it for __version__ is importing _version
    return {m for m in found if m != module and m in MODULES}


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"module {module} is in no layer of tests/test_architecture.py: add it to one")


GRAPH = {m: imports_of(m) for m in MODULES if m != "deepgmm"}


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_or_sideways_only(module):
    upward = sorted(m for m in GRAPH[module] if m != "deepgmm" and layer_of(m) > layer_of(module))
    assert not upward, (f"{module} (layer {LAYERS[layer_of(module)][0]}) imports from higher layers: "
                        + ", ".join(f"{m} ({LAYERS[layer_of(m)][0]})" for m in upward))


def test_nothing_imports_the_root_package_or_the_cli():
    for module, deps in GRAPH.items():
        assert "deepgmm" not in deps, f"{module} imports the root package; import the module that defines the name"
        if layer_of(module) < layer_of("deepgmm.cli"):
            assert not any(d.startswith("deepgmm.cli") for d in deps), f"{module} imports the CLI"


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module edges without a package's ``__init__`` -> its own submodules (re-exports)."""
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def test_no_import_cycle():
    cycle = _find_cycle(_package_edges(GRAPH))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


LONG_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
# the application layers stay sets of named steps
SHORT_FUNCTION_FILES = sorted((PACKAGE / "experiments").glob("*.py")) + sorted((PACKAGE / "cli").glob("*.py"))


def long_functions(source: str, limit: int = LONG_FUNCTION_LINES) -> list[str]:
    """The functions (methods and nested ones included) of ``source`` longer than ``limit`` lines."""
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


@pytest.mark.parametrize("path", SHORT_FUNCTION_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_long_function_or_module_in_the_experiments_and_the_cli(path):
    source = path.read_text(encoding="utf-8")
    long = long_functions(source)
    assert not long, f"{path.name}: functions over {LONG_FUNCTION_LINES} lines: {long}"
    n_lines = len(source.splitlines())
    assert n_lines <= MAX_MODULE_LINES, f"{path.name} has {n_lines} lines (at most {MAX_MODULE_LINES})"


def test_the_long_function_finder_counts_from_def_to_the_last_line():
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    assert long_functions(f"def short():\n{body[: body.rfind(chr(10))]}\n") == []
    assert long_functions(f"def long():\n{body}\n\n\ndef g():\n    pass\n") == ["long (81 lines, line 1)"]


def test_the_import_reader_sees_relative_and_function_level_imports():
    deps = imports_of("deepgmm.segmentation.core")
    assert {"deepgmm.memory", "deepgmm.segmentation.methods", "deepgmm.preprocess"} <= deps
