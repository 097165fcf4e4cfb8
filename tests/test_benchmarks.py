"""The benchmark scripts still import: every name they take from opdctl exists (they are run by hand, not by CI)."""

import ast
import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_names_a_benchmark_imports_from_opdctl_exist(script):
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            "opdctl",
            "opdctl_hf",
            "opdctl_vllm",
        ):
            module = importlib.import_module(node.module)
            missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
            assert not missing, f"{script.name}: {node.module} has no {', '.join(missing)}"
