"""The demo's tiny Llama teacher and student (``demo:teacher``, ``demo:student``), trained here on first use
and cached.

The teacher learns the task from worked solutions, a share of them with long scratch
work whose numbers are noise, until its greedy accuracy passes a target. The student
starts from an early snapshot of the teacher's training (before it has learnt to
carry reliably) and is then trained on its own mixture: clean solutions, and
solutions that re-check their steps on and on and never finish. It is weaker in two
ways, arithmetic and drift, and OPD has something to fix in the first while
Prune-OPD keeps the second from costing compute.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from opdctl.data.demo_task import Problem, random_problem
from opdctl.data.grading import last_boxed
from opdctl.errors import BackendError
from opdctl.models.cache import cache_root, cached
from opdctl.models.demo_tokenizer import build_tokenizer
from opdctl.progress import reporter

RECIPE_VERSION = "v2"
BUNDLED = Path(__file__).parent / "bundled" / "demo"  # shipped builds of the default recipe, by cache directory name
MICRO_BATCH = 8
DEMO_PREFIX = "demo:"
DEMO_MODELS = ("teacher", "student")


def resolve_demo(ref: str) -> str:
    """Map ``demo:teacher`` / ``demo:student`` to their cached directories (building them once)."""
    if not ref.startswith(DEMO_PREFIX):
        return ref
    name = ref[len(DEMO_PREFIX) :]
    if name not in DEMO_MODELS:
        raise BackendError(f"unknown demo model {ref!r}: use demo:teacher or demo:student")
    return str(ensure_models() / name)


@dataclass(frozen=True)
class Recipe:
    """Sizes and schedules of the demo models (changing any value rebuilds the cache)."""

    hidden: int = 64
    layers: int = 3
    heads: int = 4
    max_positions: int = 512
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 50
    teacher_max_steps: int = 900
    teacher_target: float = 0.95
    teacher_eval_from: int = 400
    eval_every: int = 50
    student_snapshot: int = 400
    student_steps: int = 40
    scratch_share: float = 0.3
    scratch_items: tuple[int, int] = (10, 30)
    recheck_share: float = 0.35
    recheck_length: int = 440
    seed: int = 0


def demo_dir(recipe: Recipe = Recipe()) -> Path:
    """One cache directory per recipe: a changed recipe never reuses stale models."""
    digest = hashlib.sha256(repr(recipe).encode()).hexdigest()[:8]
    return cache_root() / f"demo-{RECIPE_VERSION}-{digest}"


def ensure_models(recipe: Recipe = Recipe()) -> Path:
    """Build the demo models unless a complete cache exists; returns the cache directory.

    The default recipe's models ship with opdctl (1.6 MB, built by :func:`_build`): they
    are copied into the cache instead of built, so a first run does not spend minutes
    building them (docs/benchmarks.md, "How long does the first run take?"). Any other
    recipe is built.
    """
    bundled = BUNDLED / demo_dir(recipe).name

    def build(target: Path) -> None:
        if (bundled / "info.json").is_file():
            _install(bundled, target)
        else:
            _build(recipe, target)

    return cached(demo_dir(recipe), "info.json", build)


def _install(source: Path, target: Path) -> None:
    """Copy shipped models into the cache (whole, then renamed into place)."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _build(recipe: Recipe, target: Path) -> None:
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    reporter().message(f"Building the demo models once (cached in {target})")
    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer()
    rng = random.Random(recipe.seed + 7)
    validation = [random_problem(rng) for _ in range(128)]
    teacher = new_model(tokenizer, recipe)
    snapshot: dict[str, torch.Tensor] = {}

    def keep_snapshot(step: int, model: LlamaForCausalLM) -> None:
        if step == recipe.student_snapshot:
            snapshot.update({k: v.clone() for k, v in model.state_dict().items()})

    teacher_steps, teacher_acc = train(
        teacher,
        tokenizer,
        recipe,
        lambda rng: teacher_example(rng, tokenizer, recipe),
        recipe.teacher_max_steps,
        "Training the demo teacher",
        validation=validation,
        on_step=keep_snapshot,
    )
    student = new_model(tokenizer, recipe)
    student.load_state_dict(snapshot)
    train(
        student,
        tokenizer,
        recipe,
        lambda rng: student_example(rng, tokenizer, recipe),
        recipe.student_steps,
        "Training the demo student",
    )
    student_acc = greedy_accuracy(student, tokenizer, validation)
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(staging / name)
        tokenizer.save_pretrained(staging / name)
    info = {
        "recipe": RECIPE_VERSION,
        "teacher_steps": teacher_steps,
        "teacher_validation_accuracy": teacher_acc,
        "student_validation_accuracy": student_acc,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (staging / "info.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    reporter().message(
        f"Demo teacher: {teacher_acc:.0%} after {teacher_steps} steps; student: {student_acc:.0%} "
        f"(built in {info['build_seconds']:.0f} s)"
    )


def new_model(tokenizer: PreTrainedTokenizerBase, recipe: Recipe) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=4 * recipe.hidden,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, problem: Problem) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def clean_example(rng: random.Random, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    problem = random_problem(rng)
    return prompt_ids(tokenizer, problem), [*tokenizer.encode(problem.solution()), tokenizer.eos_token_id]


def teacher_example(
    rng: random.Random, tokenizer: PreTrainedTokenizerBase, recipe: Recipe
) -> tuple[list[int], list[int]]:
    """A clean solution, or (``scratch_share`` of the time) one with noisy scratch work that ends in the answer."""
    if rng.random() >= recipe.scratch_share:
        return clean_example(rng, tokenizer)
    problem = random_problem(rng)
    answer = tokenizer.encode(problem.scratch_solution(rng, recipe.scratch_items))
    return prompt_ids(tokenizer, problem), [*answer, tokenizer.eos_token_id]


def student_example(
    rng: random.Random, tokenizer: PreTrainedTokenizerBase, recipe: Recipe
) -> tuple[list[int], list[int]]:
    """A clean solution, or (``recheck_share`` of the time) one that re-checks on and on, without EOS."""
    if rng.random() >= recipe.recheck_share:
        return clean_example(rng, tokenizer)
    problem = random_problem(rng)
    return prompt_ids(tokenizer, problem), tokenizer.encode(problem.rechecking_solution(recipe.recheck_length))


def train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    recipe: Recipe,
    example: Callable[[random.Random], tuple[list[int], list[int]]],
    max_steps: int,
    description: str,
    validation: list[Problem] | None = None,
    on_step: Callable[[int, LlamaForCausalLM], None] | None = None,
) -> tuple[int, float]:
    """Supervised training on answers only; stops early once validation accuracy reaches the target."""
    rng = random.Random(recipe.seed + len(description))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, recipe.warmup, max_steps))
    accuracy = 0.0
    with reporter().task(description, max_steps) as advance:
        for step in range(1, max_steps + 1):
            model.train()
            loss = _backward(model, [example(rng) for _ in range(recipe.batch)], tokenizer.pad_token_id)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if on_step:
                on_step(step, model)
            advance(loss=f"{loss.item():.3f}")
            if validation and step >= recipe.teacher_eval_from and step % recipe.eval_every == 0:
                accuracy = greedy_accuracy(model, tokenizer, validation)
                if accuracy >= recipe.teacher_target:
                    return step, accuracy
    if validation:
        accuracy = greedy_accuracy(model, tokenizer, validation)
    return max_steps, accuracy


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _backward(model: LlamaForCausalLM, examples: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """Backward of the batch's mean answer-token loss, in micro-batches of similar length (less padding)."""
    examples = sorted(examples, key=lambda e: len(e[0]) + len(e[1]))
    answer_tokens = sum(len(answer) for _, answer in examples)
    total = torch.zeros(())
    for start in range(0, len(examples), MICRO_BATCH):
        group = examples[start : start + MICRO_BATCH]
        input_ids, labels = _batch(group, pad_id)
        loss = model(input_ids=input_ids, attention_mask=(labels != -100) | (input_ids != pad_id), labels=labels).loss
        share = loss * sum(len(answer) for _, answer in group) / answer_tokens
        share.backward()
        total += share.detach()
    return total


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt+answer ids, with labels only on the answer."""
    width = max(len(p) + len(a) for p, a in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (prompt, answer) in enumerate(examples):
        ids = torch.tensor(prompt + answer)
        input_ids[row, : len(ids)] = ids
        labels[row, len(prompt) : len(ids)] = ids[len(prompt) :]
    return input_ids, labels


@torch.no_grad()
def greedy_accuracy(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, problems: list[Problem]) -> float:
    """Share of problems whose greedy answer has the right \\boxed{} value."""
    model.eval()
    prompts = [prompt_ids(tokenizer, p) for p in problems]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    attention_mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=140,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return sum(last_boxed(t) == p.answer for t, p in zip(texts, problems, strict=True)) / len(problems)
