"""The package's import graph follows its layers and has no cycles (type-only and function-level imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "opdctl": ROOT / "opdctl",
    "opdctl_hf": ROOT / "plugins" / "opdctl_hf",
    "opdctl_vllm": ROOT / "plugins" / "opdctl_vllm",
}


def modules() -> dict[str, Path]:
    found = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = (package, *path.relative_to(directory).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            wanted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            # `from package import submodule` loads the submodule; the package itself is already loading
            wanted = submodules if all(s in known for s in submodules) else [base, *submodules]
        else:
            continue
        for target in wanted:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


# Lowest first: a module imports only from its own layer and the layers below it (README, "The code").
LAYERS = (
    ("opdctl", "opdctl.errors", "opdctl.progress", "opdctl.threads", "opdctl.distributed", "opdctl.plugins"),
    ("opdctl.config",),
    ("opdctl.data",),
    ("opdctl.models",),
    ("opdctl.backends",),
    ("opdctl.algorithm",),
    ("opdctl.runs",),
    ("opdctl_hf", "opdctl_vllm"),  # the backend plugins: opdctl's core never imports them
    ("opdctl.evaluation",),
    ("opdctl.training",),
    ("opdctl.tools",),
    ("opdctl.analysis",),
    ("opdctl.cli", "opdctl.__main__"),
)


def layer(module: str) -> int:
    """The index in LAYERS of the longest prefix of ``module`` listed there."""
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or (module.startswith(prefix + ".") and prefix != "opdctl")
    ]
    assert matches, f"{module} is in no layer: add its folder to LAYERS"
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph.items()
        for target in targets
        if layer(target) > layer(name)
    )


def test_every_module_imports_only_its_own_layer_and_those_below():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert upward_imports(graph) == []


def test_an_upward_import_is_found():
    graph = {"opdctl.algorithm.drift": {"opdctl.training.trainer"}, "opdctl.training.trainer": {"opdctl.errors"}}
    assert upward_imports(graph) == ["opdctl.algorithm.drift (layer 5) imports opdctl.training.trainer (layer 9)"]


def test_no_import_cycles():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert {"opdctl.training.trainer", "opdctl.config.schema", "opdctl_hf.student"} <= set(graph)
    assert "opdctl.plugins" in graph["opdctl.config.schema"]
    assert cycles(graph) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
