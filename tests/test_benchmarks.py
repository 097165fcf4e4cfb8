"""The benchmark scripts still import: every name they take from opdctl, or from benchmarks/methods.py, exists
(they are run by hand, not by CI)."""

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_names_a_benchmark_imports_from_opdctl_exist(script):
    _on_path(BENCHMARKS)
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            "opdctl",
            "opdctl_hf",
            "opdctl_vllm",
            "methods",
        ):
            module = importlib.import_module(node.module)
            missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
            assert not missing, f"{script.name}: {node.module} has no {', '.join(missing)}"


def _on_path(directory: Path) -> None:
    """Import as a script in ``directory`` would: the directory is on the path."""
    if str(directory) not in sys.path:
        sys.path.append(str(directory))


def _peers():
    """benchmarks/peers.py as a module, its directory on the path as when it is run as a script."""
    _on_path(BENCHMARKS)
    spec = importlib.util.spec_from_file_location("peers", BENCHMARKS / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peer_arms_with_several_updates_per_generation_train_each_update_on_the_same_prompts():
    from opdctl.algorithm.batching import mini_batches
    from opdctl.config.files import load_config
    from opdctl.data.prompts import PromptSampler

    peers, n, updates = _peers(), 4, 6

    def prompts_per_update(arm: str) -> list[list[int]]:
        optim = load_config(None, peers.schedule(arm, updates)).optim
        sampler, trained = PromptSampler(50, seed=3), []
        for step in range(optim.steps):
            rows = [i for i in sampler.indices(step, optim.prompts_per_step) for _ in range(n)]
            trained += [[rows[r] for r in part] for part in mini_batches(len(rows), optim.updates_per_step)]
        return trained

    one = prompts_per_update("opdctl plain OPD")
    several = prompts_per_update("opdctl plain OPD" + peers.SEVERAL_UPDATES)
    assert len(one) == updates and several == one
    with pytest.raises(SystemExit, match="multiple of 3"):
        peers.schedule("opdctl plain OPD" + peers.SEVERAL_UPDATES, 5)
