"""A local transformers model as the teacher."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from pydantic import Field
from transformers import PreTrainedTokenizerBase

from opdctl.backends.types import Rollouts, Sampling, TeacherScores
from opdctl.errors import BackendError

from .loading import HFConfig, check_same_tokenizer, context_length, eos_ids, load_model, load_tokenizer
from .sampling import sample
from .sequences import chunked_logprobs, pack, response_hidden
from .streaming import HFTeacherStream


class HFTeacherConfig(HFConfig):
    """A local transformers teacher (AutoModelForCausalLM)."""

    model: str = Field(
        "demo:teacher",
        description="Local directory, hub id, demo:teacher, or student: the student's own starting weights "
        "(self-distillation; a LoRA student lends its frozen base, no second copy).",
    )
    batch_size: int = Field(8, ge=1, description="Rollouts per scoring forward pass.")


class HFTeacher:
    """Scores rollouts with a local causal LM, in row batches and bounded log-softmax chunks."""

    Config = HFTeacherConfig
    rescores_prefix = False  # its stream keeps the teacher's KV cache between chunks

    def __init__(self, config: HFTeacherConfig, setting: str = "teacher.model") -> None:
        """``setting`` names where the model was given, for error messages (eval passes --model)."""
        self.config = config
        self.tokenizer = load_tokenizer(setting, config)
        self.model = load_model(setting, config, trainable=False)
        self.model.requires_grad_(False)
        self.device = next(self.model.parameters()).device

    def check(self, tokenizer: PreTrainedTokenizerBase, drift_k: int, loss_k: int) -> dict[str, str]:
        check_same_tokenizer(tokenizer, self.tokenizer)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if drift_k > vocab:
            raise BackendError(
                f"the drift metric's k={drift_k} exceeds the teacher's vocabulary ({vocab}): lower prune.k"
            )
        return {
            "model": self.config.model,
            "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "tokenizer": "same vocabulary as the student's",
        }

    @torch.no_grad()
    def score(self, rollouts: Rollouts, query_ids: torch.Tensor, top_k: int) -> TeacherScores:
        parts = []
        for start in range(0, len(rollouts), self.config.batch_size):
            rows = slice(start, start + self.config.batch_size)
            part = rollouts.select(rows)
            hidden = response_hidden(
                self.model, pack(part, self.tokenizer.pad_token_id, self.device), part.response_ids.shape[1]
            )
            query = query_ids[rows, : part.response_ids.shape[1]]
            parts.append(
                chunked_logprobs(self.model, hidden, part.mask.to(self.device), query, self.config.logprob_chunk, top_k)
            )
        width = rollouts.response_ids.shape[1]
        return TeacherScores(
            topk_ids=_cat_padded([p[1] for p in parts], width),
            topk_logprobs=_cat_padded([p[2] for p in parts], width),
            query_logprobs=_cat_padded([p[0] for p in parts], width),
        )

    def stream(self, prompts: list[list[int]]) -> HFTeacherStream:
        """Score a batch chunk by chunk as it is generated (the teacher keeps its own KV cache)."""
        return HFTeacherStream(self.model, prompts, self.tokenizer.pad_token_id, self.config.logprob_chunk)

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> Rollouts:
        """Let the teacher answer prompts itself (used to evaluate it)."""
        eos = eos_ids(self.model, self.tokenizer)
        return sample(self.model, prompts, sampling, eos, self.tokenizer.pad_token_id)

    def context_length(self) -> int | None:
        """Prompt plus response tokens the model takes (used to cap evaluation lengths)."""
        return context_length(self.model)

    def close(self) -> None:
        del self.model


class FrozenBaseTeacher(HFTeacher):
    """A LoRA student's frozen base as its own teacher: the student's one copy of the weights,
    scored with the adapters off (and in eval mode), so no second copy is held in memory.

    The teacher section's dtype and device do not apply: the student's weights are used as they are.
    """

    def __init__(self, config: HFTeacherConfig, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.device = next(model.parameters()).device

    @contextmanager
    def _base(self) -> Iterator[None]:
        training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield
        finally:
            self.model.train(training)

    def check(self, tokenizer: PreTrainedTokenizerBase, drift_k: int, loss_k: int) -> dict[str, str]:
        info = super().check(tokenizer, drift_k, loss_k)
        return {**info, "model": "the student's frozen base (shared; LoRA adapters off while it scores)"}

    def score(self, rollouts: Rollouts, query_ids: torch.Tensor, top_k: int) -> TeacherScores:
        with self._base():
            return super().score(rollouts, query_ids, top_k)

    def stream(self, prompts: list[list[int]]) -> AdaptersOffStream:
        with self._base():
            return AdaptersOffStream(super().stream(prompts), self._base)

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> Rollouts:
        with self._base():
            return super().generate(prompts, sampling)

    def close(self) -> None:
        """Nothing to release: the student owns the model."""


class AdaptersOffStream:
    """A teacher stream over the student's model whose every chunk is scored with the adapters off
    (the student generates, adapters on, between chunks)."""

    def __init__(self, stream: HFTeacherStream, base: Callable[[], AbstractContextManager]) -> None:
        self.inner, self.base = stream, base

    def extend(
        self, rows: list[int], tokens: torch.Tensor, lengths: torch.Tensor, query_ids: torch.Tensor, top_k: int
    ) -> TeacherScores:
        with self.base():
            return self.inner.extend(rows, tokens, lengths, query_ids, top_k)

    def close(self) -> None:
        self.inner.close()


def _cat_padded(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """Concatenate row batches trimmed to different widths, padding with zeros to ``width``."""
    padded = [torch.nn.functional.pad(p.cpu(), (0, 0, 0, width - p.shape[1])) for p in parts]
    return torch.cat(padded)
