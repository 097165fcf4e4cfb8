"""Supervised fine-tuning on worked solutions: teach a model a skill before it teaches others.

Each row is a prompt and its solution. The prompt goes through the chat template as the
user's turn, the solution is the assistant's turn, and the loss is on the solution's
tokens only (and the end-of-turn token that stops generation). Training is transformers'
``Trainer``: full fine-tuning, or LoRA adapters (peft) merged into the saved model.
Checkpoints go to ``OUT/checkpoints`` and a rerun with ``resume`` continues from the
newest; the result is a Hugging Face directory in ``OUT`` that any ``model`` key takes,
with ``OUT/sft.json`` (settings, loss curve, time) and, with LoRA, the adapter alone in
``OUT/adapter``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from opdctl.data.prompts import BUILTIN_TASKS, builtin_problems, chat_prompt, load_rows
from opdctl.data.wordproblems import DRILLS, drills
from opdctl.errors import ConfigError, DataError
from opdctl.progress import reporter

INFO_FILE = "sft.json"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
IGNORE = -100  # label of a token the loss skips


@dataclass(frozen=True)
class SFTSettings:
    data: tuple[str, ...] = ("wordproblems",)  # built-in sets or data files, drawn in turn
    prompt_field: str = "prompt"
    solution_field: str = "solution"
    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    lora_rank: int = 16  # 0: full fine-tuning
    lora_alpha: int = 32
    max_length: int = 512  # longer examples are cut (their solution's end loses its loss)
    save_every: int = 50
    keep_checkpoints: int = 1
    seed: int = 0
    lora_targets: tuple[str, ...] = field(default=("all-linear",))


@dataclass
class SFTResult:
    steps: int
    examples: int
    losses: list[tuple[int, float]]  # (step, mean training loss since the previous entry)
    trainable_parameters: int
    seconds: float


def examples(settings: SFTSettings, tokenizer: PreTrainedTokenizerBase, count: int) -> list[dict[str, list[int]]]:
    """``count`` tokenized examples (input ids and labels), drawn in turn from each entry of ``settings.data``
    (a source named twice gives twice the share)."""
    streams = {source: _rows(source, settings) for source in settings.data}
    chosen = [next(streams[settings.data[i % len(settings.data)]]) for i in range(count)]
    return [_tokenize(tokenizer, prompt, solution, settings.max_length) for prompt, solution in chosen]


def _rows(source: str, settings: SFTSettings) -> Iterator[tuple[str, str]]:
    """(prompt, solution) pairs of one source, cycled: a built-in task's endless stream, or a data file's rows."""
    if source == "demo":
        raise ConfigError("--data demo: the demo's models are built by opdctl itself; give word problems or a file")
    if source in (*BUILTIN_TASKS, DRILLS):
        problems = drills(settings.seed) if source == DRILLS else builtin_problems(source, settings.seed)
        for problem in problems:
            yield problem.prompt, problem.solution
    rows = load_rows(source)
    if not rows:
        raise DataError(f"--data {source} has no rows: it needs one row per example")
    for name, option in ((settings.prompt_field, "--prompt-field"), (settings.solution_field, "--solution-field")):
        if name not in rows[0]:
            raise DataError(f"--data {source} has no column {name!r} (columns: {', '.join(rows[0])}): set {option}")
    while True:
        for line, row in enumerate(rows, start=1):
            prompt, solution = row.get(settings.prompt_field), row.get(settings.solution_field)
            if not isinstance(prompt, str) or not prompt.strip() or not isinstance(solution, str) or not solution:
                raise DataError(f"--data {source} row {line}: needs non-empty text in {settings.prompt_field!r} "
                                f"and {settings.solution_field!r}")  # fmt: skip
            yield prompt, solution


def _tokenize(tokenizer: PreTrainedTokenizerBase, prompt: str, solution: str, max_length: int) -> dict[str, list[int]]:
    """The conversation's token ids, and labels that keep only the assistant's turn up to its end-of-turn token."""
    prompt_ids = chat_prompt(tokenizer, prompt, use_template=True)
    if tokenizer.chat_template:
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": solution}]
        ids = list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False))
    else:
        ids = prompt_ids + tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if ids[: len(prompt_ids)] != prompt_ids:
        raise DataError("the chat template renders the user's turn differently with an answer after it: "
                        "opdctl sft cannot tell where the answer starts")  # fmt: skip
    response = ids[len(prompt_ids) :]
    if tokenizer.eos_token_id in response:
        response = response[: response.index(tokenizer.eos_token_id) + 1]
    ids = (prompt_ids + response)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + response)[:max_length]
    return {"input_ids": ids, "labels": labels}


def collate(batch: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked out of attention and loss."""
    width = max(len(example["input_ids"]) for example in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        attention[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def sft(model: str, out: Path, settings: SFTSettings, resume: bool = False) -> SFTResult:
    """Fine-tune ``model`` (a directory or hub id: :func:`opdctl.models.sources.resolve_model` resolves the other
    references) on ``settings.data`` into ``out``, resuming from ``out``'s newest checkpoint with ``resume``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    _check_out(out, resume)
    started = time.perf_counter()
    path = model
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    network = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if settings.lora_rank:
        network = _with_lora(network, settings)
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    train_set = examples(settings, tokenizer, settings.steps * settings.batch_size * settings.grad_accum)
    losses: list[tuple[int, float]] = []

    class Progress(TrainerCallback):
        def __init__(self, advance: Any) -> None:
            self.advance = advance

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.advance(loss=losses[-1][1] if losses else float("nan"))

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses.append((state.global_step, round(float(logs["loss"]), 4)))

    arguments = TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        max_grad_norm=1.0,
        logging_steps=1,
        save_steps=settings.save_every,
        save_total_limit=settings.keep_checkpoints,
        report_to=[],
        seed=settings.seed,
        data_seed=settings.seed,
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",  # less padding on mixed lengths (docs/real-models.md)
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    with reporter().task("Fine-tuning", settings.steps) as advance:
        trainer = Trainer(
            model=network,
            args=arguments,
            train_dataset=train_set,
            data_collator=lambda batch: collate(batch, tokenizer.pad_token_id),
            callbacks=[Progress(advance)],
        )
        checkpoint = resume and any((out / CHECKPOINTS).glob("checkpoint-*"))
        trainer.train(resume_from_checkpoint=True if checkpoint else None)
    report = SFTResult(settings.steps, len(train_set), losses, trainable, round(time.perf_counter() - started, 1))
    _save(trainer.model, tokenizer, out, model, settings, report)
    return report


def _with_lora(network: Any, settings: SFTSettings) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("LoRA needs peft: pip install 'opdctl[lora]', or use --lora-rank 0 for full "
                          "fine-tuning") from exc  # fmt: skip
    targets = settings.lora_targets[0] if settings.lora_targets == ("all-linear",) else list(settings.lora_targets)
    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                        target_modules=targets, task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(network, config)


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a new directory")
    if not resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty: give a new directory, or add --resume to continue its training")


def _save(network: Any, tokenizer: PreTrainedTokenizerBase, out: Path, model: str, settings: SFTSettings,
          report: SFTResult) -> None:  # fmt: skip
    """The merged model and tokenizer in ``out``, the adapter alone in ``out/adapter`` (LoRA), and sft.json."""
    if settings.lora_rank:
        network.save_pretrained(out / ADAPTER)
        network = network.merge_and_unload()
    network.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"model": model, "settings": asdict(settings), "report": asdict(report)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
