"""Shared fixtures: tiny models and configs built locally (no hub access needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist, give each worker its share of the cores (it and the processes it starts), before
    torch loads: every worker spinning torch's one-thread-per-core pool on the same cores would collapse."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_share_the_cores_between_workers()  # before torch is imported (hence the E402 exemptions below)

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from opdctl.models.demo_tokenizer import build_tokenizer  # noqa: E402

# what a step cost, not what it computed: differs between runs that train identically
COSTS = {
    "generate_seconds",
    "score_seconds",
    "update_seconds",
    "drift_seconds",
    "elapsed_seconds",
    "cpu_seconds",
    "drift_checks",
}


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's consoles wide enough that no message folds inside a temporary path (xdist's are longer)."""
    from opdctl.cli import console

    for terminal in (console.console, console.stdout):
        monkeypatch.setattr(terminal, "width", 400)


def save_tiny_model(path: Path, seed: int, hidden: int = 16, layers: int = 1, tokenizer=None) -> Path:
    """A randomly initialised Llama with the demo's character tokenizer, saved in HF format."""
    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "teacher": save_tiny_model(root / "teacher", seed=1, hidden=32, layers=2),
        "student": save_tiny_model(root / "student", seed=2),
    }


def run_cli(*args: object):
    """`opdctl ARGS...` in this process (paths and numbers given as they are), its result."""
    from typer.testing import CliRunner

    from opdctl.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, code: int = 1) -> str:
    """A failed command's last line: one "error: ..." line holding every fragment, no traceback, exit ``code``."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    text = result.output.strip().splitlines()[-1]
    assert text.startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in text, text
    return text


def tiny_config(models: dict[str, Path], run_dir: Path, **sections) -> dict:
    """A config that trains in about a second on CPU."""
    config = {
        "seed": 0,
        "student": {"backend": "hf", "model": str(models["student"])},
        "teacher": {"backend": "hf", "model": str(models["teacher"]), "batch_size": 3, "logprob_chunk": 7},
        "data": {"source": "demo", "limit": 50},
        "rollout": {"n": 2, "temperature": 1.0, "max_new_tokens": 24},
        "loss": {"estimator": "topk", "k": 4},
        "prune": {"enable": True, "metric": "overlap_ratio", "k": 2, "threshold": 0.7, "w_drop": 0.1, "w_base": 0.5},
        "budget": {
            "enable": True,
            "init_len": 16,
            "min_len": 8,
            "max_len": 24,
            "increment": 4,
            "margin": 2,
            "hit_ratio": 0.1,
            "patience": 2,
        },
        "optim": {"lr": 1e-3, "steps": 4, "prompts_per_step": 3, "grad_accum": 2},
        "output": {
            "dir": str(run_dir),
            "save_every": 2,
            "trace_every": 1,
            "trace_rollouts": "all",
            "keep_checkpoints": None,
        },
        "eval": {"bench": []},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_tiny_model(path: Path, steps: int = 60) -> Path:
    """A small Llama (hidden 128, head dim 32, which vLLM's CPU backend supports) trained briefly on the
    demo task, so its distributions are peaked but numerically well-behaved."""
    from opdctl.models.demo import Recipe, clean_example, new_model, train

    tokenizer = build_tokenizer()
    recipe = Recipe(hidden=128, layers=2, heads=4, max_positions=1024, batch=16, warmup=10)
    torch.manual_seed(0)
    model = new_model(tokenizer, recipe)
    train(model, tokenizer, recipe, lambda rng: clean_example(rng, tokenizer), steps, "served model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("served") / "model")


@pytest.fixture(scope="session")
def vllm_server(served_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """A vLLM server of the served model: its users stay in one file, so that it starts once under -n N."""
    from .vllm_server import VLLMServer

    server = VLLMServer(served_model, tmp_path_factory.mktemp("vllm") / "server.log").start()
    yield server
    server.stop()
