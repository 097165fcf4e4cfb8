"""Bad input: one line naming the cause and the fix, a non-zero exit, no traceback, nothing half-written."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl.runs.checkpoint import write_manifest

from .conftest import assert_one_line_error, read_metrics, run_cli, save_tiny_model, tiny_config, write_config


def _bad_run(tiny_models, tmp_path, **sections):
    config = tiny_config(tiny_models, tmp_path / "run", **sections)
    return run_cli("train", "-c", str(write_config(tmp_path / "c.yaml", config)))


def test_missing_model_path(tiny_models, tmp_path):
    result = _bad_run(tiny_models, tmp_path, student={"model": str(tmp_path / "nowhere")})
    assert_one_line_error(result, "student.model=", "no Hugging Face model at", "config.json")
    assert not (tmp_path / "run").exists()


def test_a_run_directory_given_as_a_model_names_its_checkpoint(tiny_models, tmp_path):
    run = tmp_path / "old-run"
    for step in ("step_000002", "step_000004"):
        (run / "checkpoints" / step).mkdir(parents=True)
        write_manifest(run / "checkpoints" / step)  # complete, as a run writes them
    (run / "checkpoints" / "step_000006").mkdir()  # incomplete (no manifest): not named
    (run / "config.yaml").write_text("seed: 0\n")
    result = _bad_run(tiny_models, tmp_path, student={"model": str(run)})
    assert_one_line_error(result, f"student.model='{run}' is a training run", f"e.g. {run}/checkpoints/step_000004")
    result = run_cli("shrink", str(run), "--keep-layers", "1", "--out", str(tmp_path / "student"))
    assert_one_line_error(result, f"MODEL='{run}' is a training run")


def test_shrink_reads_prompts_from_the_column_it_is_given(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i} + 1 =", "answer": i + 1}) + "\n" for i in range(6)))
    small = ["--samples", "4", "--calibration", "1", "--held-out", "1", "--max-new-tokens", "4", "--warmup-steps", "1"]
    shrink = ["shrink", "demo:teacher", "--keep-layers", "1", "--data", str(data), *small]
    result = run_cli(*shrink, "--out", str(tmp_path / "refused"))
    assert_one_line_error(result, "has no column 'prompt' (columns: problem, answer): set --prompt-field")
    assert not (tmp_path / "refused").exists()
    result = run_cli(*shrink, "--prompt-field", "problem", "--out", str(tmp_path / "student"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "student" / "shrink.json").read_text())["settings"]["prompt_field"] == "problem"


def test_unknown_backend(tiny_models, tmp_path):
    result = _bad_run(tiny_models, tmp_path, teacher={"backend": "tgi"})
    assert_one_line_error(result, "unknown teacher backend 'tgi': set teacher.backend to 'hf'", "opdctl.teachers")


def test_tokenizer_mismatch(tiny_models, tmp_path):
    other = build_tokenizer()
    other.add_tokens(["<x>"])
    teacher = save_tiny_model(tmp_path / "other", seed=4, tokenizer=other)
    result = _bad_run(tiny_models, tmp_path, teacher={"model": str(teacher)})
    assert_one_line_error(result, "teacher and student tokenizers differ", "same tokenizer")


def test_empty_dataset(tiny_models, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    result = _bad_run(tiny_models, tmp_path, data={"source": str(data), "limit": None})
    assert_one_line_error(result, "empty.jsonl is empty", "one row per prompt")


def test_dataset_without_the_prompt_column(tiny_models, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    result = _bad_run(tiny_models, tmp_path, data={"source": str(data), "limit": None})
    assert_one_line_error(result, "no column 'prompt'", "question", "data.prompt_field")


def test_prompt_longer_than_the_limit(tiny_models, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "1+" * 300}) + "\n")
    result = _bad_run(tiny_models, tmp_path, data={"source": str(data), "limit": None, "max_prompt_tokens": 100})
    assert_one_line_error(result, "row 1", "data.max_prompt_tokens=100")


def test_prompt_plus_response_beyond_the_context(tiny_models, tmp_path):
    result = _bad_run(tiny_models, tmp_path, rollout={"max_new_tokens": 250}, budget={"enable": False})
    assert_one_line_error(result, "rollout.max_new_tokens=250", "context of 256 tokens")


def test_bad_config_value(tmp_path):
    result = run_cli("train", "prune.threshold=2")
    assert_one_line_error(result, "prune.threshold=2", "less than or equal to 1")


def test_an_unknown_benchmark_stops_config_and_train_before_anything_loads(tmp_path):
    for command in ("config", "train"):
        result = run_cli(command, "eval.bench=[aime, bogus]", f"output.dir={tmp_path / 'run'}")
        assert_one_line_error(result, "eval.bench: unknown benchmark 'bogus': use one of aime24,")
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path):
    assert_one_line_error(run_cli("train", "-c", str(tmp_path / "none.yaml")), "config file not found")
    assert_one_line_error(run_cli("config", "-c", str(tmp_path)), f"config file {tmp_path} is a directory")
    for ignored in (["-c", str(tmp_path / "none.yaml")], ["optim.steps=3"]):
        assert_one_line_error(run_cli("config", "--reference", *ignored), "--reference lists every key's default")


def test_resume_of_something_that_is_not_a_run(tmp_path):
    assert_one_line_error(run_cli("train", "--resume", str(tmp_path)), "not an opdctl run directory")


@pytest.mark.slow
def test_existing_run_directory_is_not_overwritten(tiny_models, tmp_path):
    config = tiny_config(tiny_models, tmp_path / "run", optim={"steps": 1})
    path = write_config(tmp_path / "c.yaml", config)
    assert run_cli("train", "-c", str(path)).exit_code == 0
    assert_one_line_error(run_cli("train", "-c", str(path)), "already holds a run", "--resume")


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("train", "-c", str(tmp_path / "none.yaml"), "--debug")
    assert result.exit_code != 0
    assert result.exception is not None


@pytest.fixture
def nan_teacher(tiny_models, tmp_path):
    path = save_tiny_model(tmp_path / "nan", seed=1, hidden=32, layers=2)
    weights = load_file(path / "model.safetensors")
    weights = {k: torch.full_like(v, float("nan")) if "norm" in k else v for k, v in weights.items()}
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.slow
def test_non_finite_loss_skips_steps_then_stops_with_an_intact_run(tiny_models, tmp_path, nan_teacher):
    result = _bad_run(
        tiny_models, tmp_path, teacher={"model": str(nan_teacher)}, optim={"steps": 10, "max_nonfinite_steps": 3}
    )
    assert_one_line_error(result, "3 updates in a row had a non-finite loss", "--resume")
    records = read_metrics(tmp_path / "run")
    assert [r["skipped"] for r in records] == [True, True]  # the third one raised before it was logged
    assert not list((tmp_path / "run").rglob(".*partial*"))


def test_a_quoted_reason_ends_at_a_word_not_inside_one():
    from opdctl.errors import reason

    cause = ValueError("Error while deserializing header: Either the file is corrupted or this is not a safetensors")
    assert reason(cause, limit=60) == "Error while deserializing header: Either the file is..."
    assert reason(cause) == str(cause)
    assert reason(OSError(2, "No such file or directory", "/x/model.safetensors")).startswith("/x/model.safetensors:")
