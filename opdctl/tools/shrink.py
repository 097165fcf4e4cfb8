"""A student made from its teacher: drop decoder layers chosen by measured damage, then a short warm-up.

1. The teacher answers prompts (its own text: nothing has drifted there).
2. Layers go one at a time. Each round shortlists the layers that change the hidden state
   least (1 - cosine similarity of a layer's input and output, "block influence"), removes
   each shortlisted layer in turn, and drops the one whose removal keeps the model's
   next-token distributions closest to the teacher's (KL(teacher || model), full vocabulary,
   on the teacher's text).
3. A warm-up of ``warmup_steps`` AdamW steps on the forward KL to the teacher over its own
   samples brings the shortened model back to fluent text.

The result is a Hugging Face directory that any ``student.model`` takes.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from opdctl.backends.protocols import Teacher
from opdctl.backends.types import Sampling
from opdctl.config.schema import DataConfig
from opdctl.data.prompts import load_prompts
from opdctl.errors import ConfigError, DataError
from opdctl.plugins import TEACHERS
from opdctl.progress import reporter

INFO_FILE = "shrink.json"


@dataclass(frozen=True)
class ShrinkSettings:
    keep_layers: int
    data: str = "wordproblems"  # prompts the teacher answers: a built-in task or a data file
    prompt_field: str = "prompt"  # a data file's column with the prompts
    samples: int = 64  # teacher samples for the warm-up
    calibration: int = 8  # of which this many choose the layers
    held_out: int = 8  # further samples that measure the KL before and after
    max_new_tokens: int = 128
    candidates: int = 6  # layers tried per round (shortlisted by block influence); 0 tries every layer
    warmup_steps: int = 24
    batch_size: int = 8
    lr: float = 2e-4
    seed: int = 0


@dataclass
class Texts:
    """Token ids of prompts and the teacher's answers."""

    prompts: list[list[int]]
    responses: list[list[int]]

    def part(self, start: int, stop: int) -> Texts:
        return Texts(self.prompts[start:stop], self.responses[start:stop])

    def batches(self, size: int) -> list[Texts]:
        return [self.part(i, i + size) for i in range(0, len(self.prompts), size)]


@dataclass
class ShrinkResult:
    kept_layers: list[int]
    dropped_layers: list[int]
    parameters_before: int
    parameters_after: int
    kl_dropped: float  # KL(teacher || student) per token on held-out teacher text, after dropping layers
    kl_warmed: float  # the same after the warm-up
    reverse_kl_dropped: float  # KL(student || teacher)
    reverse_kl_warmed: float
    seconds: float


def shrink(model: str, out: Path, settings: ShrinkSettings) -> ShrinkResult:
    """Build the student from ``model`` into ``out`` and report what it cost in KL."""
    started = time.perf_counter()
    _check(out, settings)
    hf = TEACHERS.get("hf")
    backend = hf(hf.Config(model=model, device="cpu", dtype="float32"), setting="MODEL")
    teacher, tokenizer = backend.model, backend.tokenizer
    layers = _decoder_layers(teacher)
    if not 1 <= settings.keep_layers < len(layers):
        raise ConfigError(f"--keep-layers {settings.keep_layers}: the model has {len(layers)} layers; keep 1 to "
                          f"{len(layers) - 1}")  # fmt: skip
    texts = teacher_texts(backend, settings)
    calibration = texts.part(0, settings.calibration)
    held_out = texts.part(settings.calibration, settings.calibration + settings.held_out)
    training = texts.part(settings.calibration + settings.held_out, len(texts.prompts))
    kept = choose_layers(teacher, calibration, settings)
    student = _copy_with_layers(teacher, kept)
    dropped_kl = kl_to_teacher(student, teacher, held_out)
    warm_up(student, teacher, training, settings)
    warmed_kl = kl_to_teacher(student, teacher, held_out)
    report = ShrinkResult(
        kept_layers=kept,
        dropped_layers=[i for i in range(len(layers)) if i not in kept],
        parameters_before=sum(p.numel() for p in teacher.parameters()),
        parameters_after=sum(p.numel() for p in student.parameters()),
        kl_dropped=dropped_kl[0],
        kl_warmed=warmed_kl[0],
        reverse_kl_dropped=dropped_kl[1],
        reverse_kl_warmed=warmed_kl[1],
        seconds=round(time.perf_counter() - started, 1),
    )
    _save(student, tokenizer, out, model, settings, report)
    return report


def _check(out: Path, settings: ShrinkSettings) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a new directory")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty: give a new directory")
    if settings.samples <= settings.calibration + settings.held_out:
        raise ConfigError(
            f"--samples {settings.samples} must exceed --calibration plus --held-out "
            f"({settings.calibration} + {settings.held_out}): the rest is the warm-up's"
        )


def teacher_texts(teacher: Teacher, settings: ShrinkSettings) -> Texts:
    """The teacher's sampled answers (temperature 1) to ``settings.samples`` prompts."""
    config = DataConfig(source=settings.data, limit=settings.samples, prompt_field=settings.prompt_field)
    try:
        prompts = load_prompts(config, teacher.tokenizer, settings.seed).ids
    except DataError as error:  # the data section's key, as shrink's option
        raise DataError(str(error).replace("set data.prompt_field", "set --prompt-field")) from None
    responses: list[list[int]] = []
    with reporter().task("Teacher samples", len(prompts)) as advance:
        for start in range(0, len(prompts), settings.batch_size):
            batch = prompts[start : start + settings.batch_size]
            sampling = Sampling(settings.max_new_tokens, 1.0, seed=settings.seed + start)
            responses += teacher.generate(batch, sampling).responses()
            advance(len(batch))
    return Texts(prompts, responses)


def choose_layers(teacher: torch.nn.Module, texts: Texts, settings: ShrinkSettings) -> list[int]:
    """Indices of the layers to keep, removing one per round by measured KL to the teacher."""
    layers = list(_decoder_layers(teacher))
    kept = list(range(len(layers)))
    targets = teacher_logprobs(teacher, texts)
    rounds = len(layers) - settings.keep_layers
    with reporter().task("Choosing layers", rounds) as advance:
        for _ in range(rounds):
            shortlist = _shortlist(teacher, layers, kept, texts, settings.candidates)
            damage = {}
            for index in shortlist:
                trial = [i for i in kept if i != index]
                with _layers(teacher, [layers[i] for i in trial]):
                    damage[index] = _kl(teacher, texts, targets)
            worst_kept = min(damage, key=damage.get)
            kept.remove(worst_kept)
            advance(kl=f"{damage[worst_kept]:.2f}", dropped=worst_kept)
    return kept


def _shortlist(
    model: torch.nn.Module, layers: list[torch.nn.Module], kept: list[int], texts: Texts, size: int
) -> list[int]:
    """The ``size`` kept layers whose output differs least from their input (all of them if ``size`` is 0)."""
    if not size or size >= len(kept):
        return list(kept)
    with _layers(model, [layers[i] for i in kept]):
        influence = torch.zeros(len(kept))
        for batch in texts.batches(4):
            ids, mask, _ = _pad(batch)
            states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            valid = mask.bool()
            for i in range(len(kept)):
                cosine = torch.nn.functional.cosine_similarity(states[i][valid], states[i + 1][valid], dim=-1)
                influence[i] += float((1 - cosine).sum())
    order = influence.argsort().tolist()
    return [kept[i] for i in order[:size]]


def teacher_logprobs(teacher: torch.nn.Module, texts: Texts) -> list[torch.Tensor]:
    """The teacher's full-vocabulary log-probs at every response position, one tensor per batch."""
    return [response_logprobs(teacher, batch) for batch in texts.batches(4)]


def response_logprobs(model: torch.nn.Module, batch: Texts) -> torch.Tensor:
    """``model``'s full-vocabulary log-probs ``[N, V]`` at the N positions that predict ``batch``'s responses."""
    ids, mask, predicting = _pad(batch)
    logits = model(input_ids=ids, attention_mask=mask).logits[predicting]
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def _kl(model: torch.nn.Module, texts: Texts, targets: list[torch.Tensor]) -> float:
    """KL(teacher || model) per response token."""
    total, count = 0.0, 0
    for batch, target in zip(texts.batches(4), targets, strict=True):
        logprobs = response_logprobs(model, batch)
        total += float((target.exp() * (target - logprobs)).sum())
        count += target.shape[0]
    return total / max(count, 1)


@torch.no_grad()
def kl_to_teacher(student: torch.nn.Module, teacher: torch.nn.Module, texts: Texts) -> tuple[float, float]:
    """(KL(teacher || student), KL(student || teacher)) per token on ``texts``."""
    forward, reverse, count = 0.0, 0.0, 0
    for batch in texts.batches(4):
        q, p = response_logprobs(teacher, batch), response_logprobs(student.eval(), batch)
        forward += float((q.exp() * (q - p)).sum())
        reverse += float((p.exp() * (p - q)).sum())
        count += q.shape[0]
    return forward / max(count, 1), reverse / max(count, 1)


def warm_up(student: torch.nn.Module, teacher: torch.nn.Module, texts: Texts, settings: ShrinkSettings) -> None:
    """AdamW on KL(teacher || student) over the teacher's samples, ``settings.batch_size`` at a time."""
    if not settings.warmup_steps:
        return
    student.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=0.0)
    order = list(range(len(texts.prompts)))
    rng = random.Random(settings.seed)
    with reporter().task("Warm-up", settings.warmup_steps) as advance:
        for step in range(settings.warmup_steps):
            if step * settings.batch_size % len(order) < settings.batch_size:
                rng.shuffle(order)
            start = step * settings.batch_size % len(order)
            rows = order[start : start + settings.batch_size]
            batch = Texts([texts.prompts[i] for i in rows], [texts.responses[i] for i in rows])
            with torch.no_grad():
                target = response_logprobs(teacher, batch)
            loss = (target.exp() * (target - response_logprobs(student, batch))).sum(-1).mean()
            for group in optimizer.param_groups:  # cosine decay to 10%
                group["lr"] = settings.lr * (0.55 + 0.45 * math.cos(math.pi * step / settings.warmup_steps))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            advance(kl=f"{loss.item():.2f}")
    student.eval().requires_grad_(False)


def _pad(batch: Texts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and a mask of the positions that predict response tokens."""
    rows = [p + r for p, r in zip(batch.prompts, batch.responses, strict=True)]
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    predicting = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, prompt) in enumerate(zip(rows, batch.prompts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        predicting[i, len(prompt) - 1 : len(row) - 1] = True
    return ids, mask, predicting


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"cannot find the decoder layers of {type(model).__name__}: shrink needs decoder.layers")
    return layers


class _layers:
    """Run ``model`` with only the given decoder layers, then restore its own."""

    def __init__(self, model: torch.nn.Module, layers: list[torch.nn.Module]) -> None:
        self.decoder, self.layers = model.get_decoder(), torch.nn.ModuleList(layers)

    def __enter__(self) -> None:
        self.saved, self.decoder.layers = self.decoder.layers, self.layers

    def __exit__(self, *exc: object) -> None:
        self.decoder.layers = self.saved


def _copy_with_layers(teacher: torch.nn.Module, kept: list[int]) -> torch.nn.Module:
    """A copy of ``teacher`` with only the ``kept`` layers, renumbered for the KV cache."""
    model = copy.deepcopy(teacher)
    decoder = model.get_decoder()
    decoder.layers = torch.nn.ModuleList([decoder.layers[i] for i in kept])
    for index, layer in enumerate(decoder.layers):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = index
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
    return model


def _save(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    source: str,
    settings: ShrinkSettings,
    report: ShrinkResult,
) -> None:
    staging = out.with_name(f".{out.name}.partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    info = {"teacher": source, "settings": asdict(settings), **asdict(report)}
    (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    staging.rename(out)
