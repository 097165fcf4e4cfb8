"""Data-parallel training: two processes under torchrun end where one process over the same data ends."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from opdctl.distributed import World
from opdctl.errors import ConfigError

from .conftest import read_metrics, tiny_config, write_config
from .vllm_server import free_port

TIMING = {"generate_seconds", "score_seconds", "update_seconds", "drift_seconds", "elapsed_seconds"}


def _train(config_path, processes: int, log) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process
    if processes == 1:
        command = [sys.executable, "-m", "opdctl", "train", "-c", str(config_path)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   f"--master_port={free_port()}", "-m", "opdctl", "train", "-c", str(config_path)]  # fmt: skip
    result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600, check=False)
    with open(log.name) as output:
        assert result.returncode == 0, output.read()[-3000:]


@pytest.mark.parametrize("truncate", [False, True])
def test_two_processes_end_with_the_weights_of_one(tiny_models, tmp_path, truncate):
    runs = {}
    for processes in (1, 2):
        extra = {"rollout": {"truncate_on_drift": True, "chunk_tokens": 4}} if truncate else {}
        config = tiny_config(
            tiny_models, tmp_path / f"p{processes}", optim={"steps": 3, "prompts_per_step": 4}, **extra
        )
        with open(tmp_path / f"p{processes}.log", "w") as log:
            _train(write_config(tmp_path / f"p{processes}.yaml", config), processes, log)
        runs[processes] = tmp_path / f"p{processes}"
    one = AutoModelForCausalLM.from_pretrained(runs[1] / "checkpoints" / "step_000003").state_dict()
    two = AutoModelForCausalLM.from_pretrained(runs[2] / "checkpoints" / "step_000003").state_dict()
    for name in one:
        assert (one[name] - two[name]).abs().max() < 1e-6, name
    assert not torch.equal(one["model.norm.weight"], torch.ones_like(one["model.norm.weight"]))  # it trained

    def comparable(run):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run)]

    for a, b in zip(comparable(runs[1]), comparable(runs[2]), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert [p.name for p in (runs[2] / "traces" / "tokens").iterdir()]  # process 0 wrote the traces


def test_uneven_split_is_refused():
    with pytest.raises(ConfigError, match="do not divide among 3 processes"):
        World(rank=0, size=3).share(8)


def test_fsdp_launch_is_refused_not_faked(monkeypatch):
    from opdctl.distributed import setup_world

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="FSDP is not supported by opdctl yet"):
        setup_world()
