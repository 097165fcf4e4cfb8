"""Data-parallel training: two processes under torchrun end where one process over the same data ends.

Each torchrun run takes about 10-20 s on two CPU cores.
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from opdctl.config.files import validate
from opdctl.distributed import World
from opdctl.errors import ConfigError

from .conftest import COSTS, read_metrics, tiny_config, write_config
from .vllm_server import free_port


def _train(config_path, processes: int, log, resume=None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process
    arguments = ["train", "--resume", str(resume)] if resume else ["train", "-c", str(config_path)]
    if processes == 1:
        command = [sys.executable, "-m", "opdctl", *arguments]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   f"--master_port={free_port()}", "-m", "opdctl", *arguments]  # fmt: skip
    result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600, check=False)
    with open(log.name) as output:
        assert result.returncode == 0, output.read()[-3000:]


def _weights(run, step: int = 3) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(run / "checkpoints" / f"step_{step:06d}").state_dict()


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """Runs of 3 steps, each trained once per module: run(processes, parallel, truncate) -> its directory.
    One process is the reference of both ddp and fsdp (student.parallel does nothing in a single process)."""
    runs = {}

    def run(processes: int, parallel: str, truncate: bool):
        key = (processes, parallel if processes > 1 else "ddp", truncate)
        if key not in runs:
            root = tmp_path_factory.mktemp("-".join(map(str, key)))
            extra = {"rollout": {"truncate_on_drift": True, "chunk_tokens": 4}} if truncate else {}
            config = tiny_config(tiny_models, root / "run", optim={"steps": 3, "prompts_per_step": 4}, **extra)
            config["student"]["parallel"] = key[1]
            with open(root / "train.log", "w") as log:
                _train(write_config(root / "run.yaml", config), processes, log)
            runs[key] = root / "run"
        return runs[key]

    return run


@pytest.mark.slow
@pytest.mark.parametrize(("parallel", "truncate"), [("ddp", False), ("ddp", True), ("fsdp", False), ("fsdp", True)])
def test_two_processes_end_with_the_weights_of_one(trained, parallel, truncate):
    """With fsdp the two processes shard the student."""
    runs = {processes: trained(processes, parallel, truncate) for processes in (1, 2)}
    one, two = _weights(runs[1]), _weights(runs[2])
    assert one.keys() == two.keys()
    for name in one:  # measured: 1.6e-7 apart (5.8e-8 truncating), ddp and fsdp alike: float32 sum order
        assert (one[name] - two[name]).abs().max() < 1e-6, name
    assert not torch.equal(one["model.norm.weight"], torch.ones_like(one["model.norm.weight"]))  # it trained

    def comparable(run):
        return [{k: v for k, v in r.items() if k not in COSTS} for r in read_metrics(run)]

    for a, b in zip(comparable(runs[1]), comparable(runs[2]), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert [p.name for p in (runs[2] / "traces" / "tokens").iterdir()]  # process 0 wrote the traces


def test_uneven_split_is_refused():
    with pytest.raises(ConfigError, match="do not divide among 3 processes"):
        World(rank=0, size=3).share(8)


@pytest.mark.slow
def test_fsdp_resumes_where_it_stopped(trained, tmp_path):
    """A sharded run resumed from its step-2 checkpoint (weights and optimizer state) ends as if never stopped."""
    whole = trained(2, "fsdp", False)
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000003")
    with open(tmp_path / "resumed.log", "w") as log:
        _train(None, 2, log, resume=resumed)
    whole_weights, again = _weights(whole), _weights(resumed)
    with safe_open(resumed / "checkpoints" / "step_000003" / "model.safetensors", "pt") as written:
        names = written.keys()
    assert "lm_head.weight" not in names  # tied to the embeddings: written once, as save_pretrained does
    for name in whole_weights:
        assert torch.equal(whole_weights[name], again[name]), name
    assert read_metrics(resumed)[-1]["loss"] == read_metrics(whole)[-1]["loss"]
    optimizer = torch.load(resumed / "checkpoints" / "step_000003" / "optimizer.pt", weights_only=True)
    assert set(optimizer["state"]) == set(whole_weights) - {"lm_head.weight"}  # whole tensors by parameter name


@pytest.mark.parametrize(
    ("student", "refusal"),
    [({"lora": {"r": 4}}, "does not train LoRA"), ({"rollout": "vllm-server"}, "does not push sharded weights")],
)
def test_fsdp_refuses_what_it_does_not_support(tiny_models, tmp_path, student, refusal):
    config = tiny_config(tiny_models, tmp_path / "run")
    config["student"].update(parallel="fsdp", **student)
    with pytest.raises(ConfigError, match=f"student.parallel=fsdp {refusal}"):
        validate(config)


def test_accelerate_fsdp_launch_is_refused_not_faked(monkeypatch):
    from opdctl.distributed import setup_world

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match=r"launch without --use_fsdp and set student\.parallel=fsdp"):
        setup_world()
