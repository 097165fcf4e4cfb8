"""opdctl sft: the answer-only loss, a model directory that loads, LoRA merged, resume, one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from opdctl.data.demo_task import random_problem
from opdctl.tools.sft import ADAPTER, CHECKPOINTS, IGNORE, INFO_FILE, SFTSettings, collate, examples, sft

from .conftest import assert_one_line_error, run_cli


def demo_rows(path: Path, count: int = 64) -> Path:
    """A data file of the demo task's problems and worked solutions (prompt and solution columns)."""
    rng = random.Random(0)
    rows = [random_problem(rng, 5, 6) for _ in range(count)]
    path.write_text("".join(json.dumps({"prompt": p.prompt, "solution": p.solution()}) + "\n" for p in rows))
    return path


def test_labels_hold_the_solution_and_its_end_of_turn_only(tiny_models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["student"])
    settings = SFTSettings(data=(str(demo_rows(tmp_path / "d.jsonl", 2)),))
    example = examples(settings, tokenizer, 1)[0]
    row = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    answer = [*tokenizer.encode(row["solution"], add_special_tokens=False), tokenizer.eos_token_id]
    assert example["input_ids"] == [*prompt, *answer]
    assert example["labels"] == [IGNORE] * len(prompt) + answer


def test_collate_pads_and_masks_the_padding():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def answer_loss(model_dir: Path, data: Path) -> float:
    """Mean answer-token loss of a saved model on a data file's first rows."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = collate(examples(SFTSettings(data=(str(data),)), tokenizer, 16), tokenizer.pad_token_id)
    with torch.no_grad():
        return float(AutoModelForCausalLM.from_pretrained(model_dir)(**batch).loss)


def test_full_fine_tuning_lowers_the_answer_loss(tiny_models, tmp_path):
    data = demo_rows(tmp_path / "d.jsonl")
    result = run_cli("sft", tiny_models["student"], "--data", data, "--steps", 30, "--lora-rank", 0,
                     "--lr", 1e-2, "--warmup-steps", 2, "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fine-tuned into" in result.output
    assert answer_loss(tmp_path / "out", data) < 0.8 * answer_loss(tiny_models["student"], data)
    info = json.loads((tmp_path / "out" / INFO_FILE).read_text())
    assert info["report"]["steps"] == 30 and len(info["report"]["losses"]) == 30
    assert not (tmp_path / "out" / CHECKPOINTS).exists()


def test_lora_saves_the_adapter_and_the_merged_model(tiny_models, tmp_path):
    data = demo_rows(tmp_path / "d.jsonl")
    settings = SFTSettings(data=(str(data),), steps=20, lr=3e-2, warmup_steps=2, lora_rank=4, lora_alpha=8)
    report = sft(str(tiny_models["student"]), tmp_path / "out", settings)
    assert (tmp_path / "out" / ADAPTER / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert report.trainable_parameters < sum(p.numel() for p in merged.parameters()) / 2
    assert answer_loss(tmp_path / "out", data) < answer_loss(tiny_models["student"], data)


def test_resume_continues_from_the_newest_checkpoint(tiny_models, tmp_path, monkeypatch):
    from transformers import Trainer

    data = demo_rows(tmp_path / "d.jsonl")
    settings = SFTSettings(data=(str(data),), steps=6, save_every=2, lora_rank=0)
    original = Trainer.training_step
    calls = {"n": 0}

    def crash_at_step_four(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", crash_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        sft(str(tiny_models["student"]), tmp_path / "out", settings)
    assert (tmp_path / "out" / CHECKPOINTS / "checkpoint-2").is_dir()
    monkeypatch.setattr(Trainer, "training_step", original)
    report = sft(str(tiny_models["student"]), tmp_path / "out", settings, resume=True)
    assert [step for step, _ in report.losses] == [3, 4, 5, 6]  # steps 1-2 came from the checkpoint


def test_a_used_output_directory_is_refused(tiny_models, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    result = run_cli("sft", tiny_models["student"], "--data", demo_rows(tmp_path / "d.jsonl"), "--out",
                     tmp_path / "out")  # fmt: skip
    assert_one_line_error(result, "--out", "not empty", "--resume")


def test_a_missing_solution_column_names_the_option(tiny_models, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a1+b2", "answer": "3"}) + "\n")
    result = run_cli("sft", tiny_models["student"], "--data", data, "--out", tmp_path / "out")
    assert_one_line_error(result, "no column 'solution'", "--solution-field")


def test_an_empty_solution_names_its_line(tiny_models, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a1+b2", "solution": "a1+b2=3"}) + "\n" + json.dumps(
        {"prompt": "a1+b1", "solution": ""}) + "\n")  # fmt: skip
    result = run_cli("sft", tiny_models["student"], "--data", data, "--out", tmp_path / "out", "--steps", 1)
    assert_one_line_error(result, "row 2", "'solution'")


def test_word_problems_train_on_their_worked_solutions(tiny_models):
    from opdctl.data.wordproblems import training_problems

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["student"])
    settings = SFTSettings(data=("wordproblems", "wordproblems-long"), max_length=4096)
    rows = examples(settings, tokenizer, 4)
    short, long = training_problems(0, "wordproblems"), training_problems(0, "wordproblems-long")
    expected = [next(short).solution, next(long).solution, next(short).solution, next(long).solution]
    for row, solution in zip(rows, expected, strict=True):
        answer = [t for t in row["labels"] if t != IGNORE]
        assert answer == [*tokenizer.encode(solution, add_special_tokens=False), tokenizer.eos_token_id]
