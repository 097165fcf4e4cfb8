"""End-to-end `opdctl train` on tiny models: the run directory, traces, plain OPD, resume."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from opdctl import threads
from opdctl.cli import app
from opdctl.runs.rundir import RunDir

from .conftest import COSTS, read_metrics, tiny_config, write_config

pytestmark = pytest.mark.slow  # whole trainings, a vLLM server or subprocesses

STEP_KEYS = {
    "step",
    "loss",
    "reverse_kl",
    "overlap",
    "bad_event_rate",
    "weight",
    "effective_length",
    "max_len",
    "next_max_len",
    "hit_ratio",
    "tokens_generated",
    "tokens_scored",
    "tokens_trained",
    *COSTS,
}


def train(config_path, *args):
    result = CliRunner().invoke(app, ["train", "-c", str(config_path), *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def tiny_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = tiny_config(tiny_models, root / "run", eval={"bench": ["synthetic"], "max_problems": 2})
    result = train(write_config(root / "tiny.yaml", config))
    return root / "run", config, result.output


def test_run_directory_holds_config_metrics_traces_checkpoints(tiny_run):
    run_dir, config, _ = tiny_run
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["prune"] == {**written["prune"], **config["prune"]}
    steps = [r for r in read_metrics(run_dir) if "eval" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert set(steps[0]) >= STEP_KEYS
    assert all(r["tokens_generated"] == r["tokens_scored"] > 0 for r in steps)
    assert sorted(p.name for p in (run_dir / "traces" / "tokens").iterdir()) == [
        f"step_{i:06d}.parquet" for i in (1, 2, 3, 4)
    ]
    assert [step for step, _ in RunDir(run_dir).checkpoints()] == [2, 4]
    checkpoint = run_dir / "checkpoints" / "step_000004"
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "tokenizer.json", "config.yaml"} <= {
        p.name for p in checkpoint.iterdir()
    }
    AutoModelForCausalLM.from_pretrained(checkpoint)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["cpu_seconds"] == steps[-1]["cpu_seconds"] > 0
    assert summary["cpu_threads"] == threads.setting()  # what the run computed with, and why
    assert not (run_dir / "trackers.json").exists()  # it reports to no tracker
    assert not list(run_dir.rglob(".*partial*"))


def test_a_finished_run_prints_what_to_run_next(tiny_run):
    run_dir, _, output = tiny_run
    text = " ".join(output.split())
    assert f"look at the drift: opdctl inspect-drift {run_dir}" in text
    assert f"evaluate it: opdctl eval --model {run_dir} --bench synthetic -n 1 --temperature 0" in text


def test_budget_in_metrics_follows_the_controller(tiny_run):
    """max_len of each step is the previous step's next_max_len, inside [min_len, max_len]."""
    run_dir, config, _ = tiny_run
    steps = [r for r in read_metrics(run_dir) if "eval" not in r]
    assert steps[0]["max_len"] == config["budget"]["init_len"]
    for before, after in itertools.pairwise(steps):
        assert after["max_len"] == before["next_max_len"]
    assert all(config["budget"]["min_len"] <= r["next_max_len"] <= config["budget"]["max_len"] for r in steps)


def test_traced_weights_recompute_from_bad_events_and_config(tiny_run):
    """An independent recomputation of every traced token's weight from the trace and the config."""
    run_dir, config, _ = tiny_run
    prune = config["prune"]
    tokens = pq.read_table(run_dir / "traces" / "tokens").to_pandas()
    rollouts = pq.read_table(run_dir / "traces" / "rollouts").to_pandas()
    assert len(tokens) > 0
    for (step, rollout), group in tokens.groupby(["step", "rollout"]):
        group = group.sort_values("position")
        assert list(group["position"]) == list(range(len(group)))
        assert list(group["bad"]) == [o < prune["threshold"] for o in group["overlap"]]
        count, effective = 0, 0
        for bad, weight, loss_weight in zip(group["bad"], group["weight"], group["loss_weight"], strict=True):
            count += bool(bad)
            expected = min(1.0, max(0.0, 1.0 - prune["w_drop"] * count))
            assert weight == pytest.approx(expected, abs=1e-6)
            assert loss_weight == pytest.approx(expected + prune["w_base"], abs=1e-6)
            effective += expected > 1e-8
        row = rollouts[(rollouts.step == step) & (rollouts.rollout == rollout)].iloc[0]
        assert row.effective_length == effective
        assert row.length == len(group)


def test_plain_opd_is_the_same_loop_with_unit_weights(tiny_models, tmp_path):
    config = tiny_config(tiny_models, tmp_path / "plain", prune={"enable": False}, budget={"enable": False})
    train(write_config(tmp_path / "plain.yaml", config))
    steps = [r for r in read_metrics(tmp_path / "plain") if "eval" not in r]
    assert all(r["weight"] == 1.0 and r["max_len"] == 24 == r["next_max_len"] for r in steps)
    tokens = pq.read_table(tmp_path / "plain" / "traces" / "tokens").to_pandas()
    assert (tokens["loss_weight"] == 1.0).all()


def _documented_plain_opd() -> list[str]:
    """The plain-OPD overrides as README's command list and docs/config.md's table write them."""
    root = Path(__file__).parent.parent
    command = next(line for line in (root / "README.md").read_text().splitlines() if "# plain OPD" in line)
    overrides = command.split("#")[0].split()[2:]  # after "opdctl train"
    row = next(line for line in (root / "README.md").read_text().splitlines() if "| plain OPD baseline" in line)
    assert row.split("`")[1].split() == overrides
    return overrides


@pytest.mark.slow
def test_documented_plain_opd_baseline_runs_on_the_demo_config(tiny_models, tmp_path):
    """README's baseline command, on the embedded demo config (truncation on), with tiny models and one step."""
    overrides = _documented_plain_opd()
    assert overrides == ["prune.enable=false", "budget.enable=false"]
    run_dir = tmp_path / "plain"
    result = CliRunner().invoke(
        app,
        [
            "train",
            *overrides,
            f"student.model={tiny_models['student']}",
            f"teacher.model={tiny_models['teacher']}",
            *["rollout.max_new_tokens=32", "optim.steps=1", "optim.prompts_per_step=3", "eval.bench=[]"],
            f"output.dir={run_dir}",
        ],
    )
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["rollout"]["truncate_on_drift"] is False and resolved["prune"]["enable"] is False
    steps = [r for r in read_metrics(run_dir) if "eval" not in r]
    assert steps[0]["weight"] == 1.0 and steps[0]["finish_drift"] == 0


@pytest.mark.parametrize(
    ("schedule", "warmup", "expected"),
    [("linear", 0, [0.75, 0.5, 0.25, 0.0]), ("cosine", 2, [0.5, 1.0, 0.5, 0.0]), ("constant", 2, [0.5, 1, 1, 1])],
)
def test_learning_rate_follows_the_schedule(tiny_models, tmp_path, schedule, warmup, expected):
    optim = {"lr_schedule": schedule, "warmup_steps": warmup}
    train(write_config(tmp_path / "run.yaml", tiny_config(tiny_models, tmp_path / "run", optim=optim)))
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run") if "eval" not in r]  # the rate for the next step
    assert lrs == pytest.approx([1e-3 * f for f in expected], abs=1e-12)


@pytest.mark.parametrize("baseline", ["none", "mean"])
def test_sampled_estimator_and_top_p_metric_follow_their_formulas(tiny_models, tmp_path, baseline):
    """Every token is traced, so the logged loss recomputes from the traces: -sum m_t (A_t - b) log p(y_t) / tokens,
    b the step's mean advantage (from the rollout log-probs, which differ from the traced ones by the logged gap)."""
    config = tiny_config(
        tiny_models,
        tmp_path / "run",
        loss={"estimator": "sampled", "baseline": baseline},
        prune={"metric": "teacher_top_p", "threshold": 0.9},
    )
    train(write_config(tmp_path / "c.yaml", config))
    steps = [r for r in read_metrics(tmp_path / "run") if "eval" not in r]
    tokens = pq.read_table(tmp_path / "run" / "traces" / "tokens").to_pandas()
    assert set(tokens["signal"]) <= {0.0, 1.0} and (tokens["bad"] == (tokens["signal"] == 0.0)).all()
    for record in steps:
        mine = tokens[tokens.step == record["step"]]
        advantage = mine.teacher_logprob - mine.student_logprob
        b = advantage.mean() if baseline == "mean" else 0.0
        expected = -(mine.loss_weight * (advantage - b) * mine.student_logprob).sum() / len(mine)
        slack = record["logprob_gap_mean"] * float(abs((mine.loss_weight * mine.student_logprob).sum())) / len(mine)
        assert record["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6 + slack)


def test_in_training_evaluation_is_logged(tiny_models, tmp_path):
    config = tiny_config(tiny_models, tmp_path / "run", eval={"bench": ["synthetic"], "max_problems": 3, "every": 2})
    result = train(write_config(tmp_path / "c.yaml", config))
    evals = [r for r in read_metrics(tmp_path / "run") if "eval" in r]
    assert [(r["step"], r["when"]) for r in evals] == [(0, "before"), (2, "during"), (4, "after")]
    assert all(r["samples"] == 3 for r in evals)
    assert "student accuracy on synthetic, after" in result.output


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in COSTS} for r in records]


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_models, tmp_path):
    steps = {"steps": 24}
    output = {"save_every": 4, "keep_checkpoints": 2}
    whole = tiny_config(tiny_models, tmp_path / "whole", optim=steps, output=output)
    train(write_config(tmp_path / "whole.yaml", whole))

    crashed = tiny_config(tiny_models, tmp_path / "crashed", optim=steps, output=output)
    path = write_config(tmp_path / "crashed.yaml", crashed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "opdctl", "train", "-c", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = tmp_path / "crashed" / "checkpoints" / "step_000008"
    deadline = time.time() + 120
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = [r["step"] for r in read_metrics(tmp_path / "crashed") if "eval" not in r]
    assert done and done[-1] < 24, "the run finished before it could be killed"

    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "crashed")])
    assert result.exit_code == 0, result.output
    assert _comparable(read_metrics(tmp_path / "crashed")) == _comparable(read_metrics(tmp_path / "whole"))
    final_a = AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "checkpoints" / "step_000024")
    final_b = AutoModelForCausalLM.from_pretrained(tmp_path / "crashed" / "checkpoints" / "step_000024")
    for a, b in zip(final_a.state_dict().values(), final_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("override", "named"),
    [("output.dir={tmp}/elsewhere", "output.dir={tmp}/elsewhere cannot change on --resume"),
     ("student.model={teacher}", "student.model={teacher} cannot change on --resume")],
)  # fmt: skip
def test_resume_refuses_to_move_the_run_or_swap_its_student(tiny_run, tiny_models, tmp_path, override, named):
    run_dir, _, _ = tiny_run
    before = (run_dir / "config.yaml").read_text()
    fill = {"tmp": tmp_path, "teacher": tiny_models["teacher"]}
    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), override.format(**fill)])
    assert result.exit_code == 1 and named.format(**fill) in result.output
    assert "start a new run instead" in result.output
    assert (run_dir / "config.yaml").read_text() == before and not (tmp_path / "elsewhere").exists()


def test_resume_can_extend_a_finished_run(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "extended"
    shutil.copytree(tiny_run[0], run_dir)
    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "optim.steps=6"])
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(run_dir) if "eval" not in r] == [1, 2, 3, 4, 5, 6]


def test_console_script_runs(tiny_models, tmp_path):
    config = tiny_config(tiny_models, tmp_path / "run", optim={"steps": 1})
    path = write_config(tmp_path / "c.yaml", config)
    script = Path(sys.executable).parent / "opdctl"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "200"}
    result = subprocess.run([str(script), "train", "-c", str(path)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "tokens generated" in result.stdout
    assert "waiting threads sleep (OMP_WAIT_POLICY=PASSIVE in the environment)" in result.stdout


@pytest.mark.parametrize("estimator", ["topk", "sampled"])
def test_length_grouped_micro_batches_give_the_whole_batch_update(tiny_models, tmp_path, estimator):
    """The update over length-grouped micro-batches equals one whole-batch update (loss, parameters)."""
    from opdctl.algorithm.batching import length_groups
    from opdctl.algorithm.drift import measure_drift
    from opdctl.backends.types import Sampling
    from opdctl.config.files import validate
    from opdctl.data.demo_task import held_out
    from opdctl.data.prompts import PromptSet
    from opdctl.models.demo import prompt_ids
    from opdctl.models.demo_tokenizer import build_tokenizer
    from opdctl.training.trainer import Trainer
    from opdctl_hf import HFStudent, HFTeacher

    prompts = [prompt_ids(build_tokenizer(), p) for p in held_out(9)]
    results = []
    for accum in (1, 4):
        raw = tiny_config(tiny_models, tmp_path / f"run{accum}", loss={"k": 4, "estimator": estimator})
        config = validate({**raw, "optim": {**raw["optim"], "grad_accum": accum, "prompts_per_step": 9}})
        student = HFStudent(HFStudent.Config(model=str(tiny_models["student"])))
        teacher = HFTeacher(HFTeacher.Config(model=str(tiny_models["teacher"])))
        run = RunDir.create(tmp_path / f"run{accum}", config.to_yaml())
        trainer = Trainer(config, run, student, teacher, PromptSet(prompts, [""] * 9, [None] * 9))
        rollouts = student.generate(prompts, Sampling(24, 1.0, record_topk=4, seed=5))
        scores = teacher.score(rollouts, rollouts.query_ids(), 2)
        weights = measure_drift(config, rollouts, scores).weights.loss_weight
        update = trainer.updater.step(rollouts, scores, weights, trainer._count_nonfinite)
        results.append((update, [p.detach().clone() for p in student.model.parameters()], rollouts))
    (one, params_one, rollouts), (grouped, params_grouped, _) = results
    assert len(set(rollouts.lengths.tolist())) > 3  # lengths differ: the groups pad differently
    groups = length_groups(rollouts.lengths, 4)
    assert sorted(row for group in groups for row in group) == list(range(9)) and len(groups) == 3
    assert grouped.loss == pytest.approx(one.loss, rel=1e-5, abs=1e-7)
    assert grouped.grad_norm == pytest.approx(one.grad_norm, rel=1e-5)  # Adam's first step hides scale
    assert torch.allclose(grouped.sampled_logprobs, one.sampled_logprobs, atol=1e-5)
    for a, b in zip(params_one, params_grouped, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_updates_per_step_update_once_per_mini_batch_in_order(tiny_models, tmp_path):
    """optim.updates_per_step=2 is two updates, on the first then the second half of the rollouts (the top-k
    estimator needs no correction), with the learning-rate schedule moving at each."""
    from opdctl.algorithm.drift import measure_drift
    from opdctl.backends.types import Sampling
    from opdctl.config.files import validate
    from opdctl.data.demo_task import held_out
    from opdctl.data.prompts import PromptSet
    from opdctl.models.demo import prompt_ids
    from opdctl.models.demo_tokenizer import build_tokenizer
    from opdctl.training.trainer import Trainer
    from opdctl_hf import HFStudent, HFTeacher

    prompts = [prompt_ids(build_tokenizer(), p) for p in held_out(8)]

    def trainer(updates: int, name: str) -> Trainer:
        raw = tiny_config(tiny_models, tmp_path / name, loss={"k": 4})
        optim = {**raw["optim"], "prompts_per_step": 8, "updates_per_step": updates, "lr_schedule": "linear"}
        config = validate({**raw, "optim": optim, "rollout": {**raw["rollout"], "n": 1}})
        student = HFStudent(HFStudent.Config(model=str(tiny_models["student"])))
        teacher = HFTeacher(HFTeacher.Config(model=str(tiny_models["teacher"])))
        run = RunDir.create(tmp_path / name, config.to_yaml())
        return Trainer(config, run, student, teacher, PromptSet(prompts, [""] * 8, [None] * 8))

    both, halves = trainer(2, "both"), trainer(1, "halves")
    halves.updater.scheduler = type(both.updater.scheduler)(halves.updater.optimizer, both.updater.scheduler.lr_lambdas)
    rollouts = both.student.generate(prompts, Sampling(24, 1.0, record_topk=4, seed=5))
    scores = both.teacher.score(rollouts, rollouts.query_ids(), 2)
    weights = measure_drift(both.config, rollouts, scores).weights.loss_weight
    update = both.updater.step(rollouts, scores, weights, both._count_nonfinite)
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
        part = rollouts.select(rows)
        width = part.response_ids.shape[1]
        part_scores = halves.teacher.score(part, part.query_ids(), 2)
        halves.updater.step(part, part_scores, weights[rows, :width], halves._count_nonfinite)
    for a, b in zip(both.student.model.parameters(), halves.student.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert both.updater.scheduler.last_epoch == 2 and update.lr == halves.updater.lr
    first = rollouts.select([0, 1, 2, 3])
    assert torch.equal(update.sampled_logprobs[4:], rollouts.sampled_logprobs[4:])  # generation's, second half
    assert torch.allclose(update.sampled_logprobs[:4, : first.response_ids.shape[1]], first.sampled_logprobs, atol=1e-5)
