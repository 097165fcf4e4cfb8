"""Teacher and student backends: the data they exchange and their protocols.

Backends are plugins found through entry points (:mod:`opdctl.registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from pydantic import BaseModel
    from transformers import PreTrainedTokenizerBase

    from opdctl.config import BackendConfig
    from opdctl.distributed import World

FinishedCallback = Callable[[list[int], "Rollouts"], None]
FINISH_REASONS = ("eos", "length", "drift")


class QueryLayout:
    """What the teacher is asked about at each response position: the last axis of query ids and their log-probs.

    Columns ``0..k-1`` are the student's top-k candidates S_t (best first), column ``k``
    is the sampled token y_t: ``[B, T, k + 1]``.
    """

    @staticmethod
    def ids(topk_ids: torch.Tensor, sampled_ids: torch.Tensor) -> torch.Tensor:
        """Query ids from the student's top-k ``[..., k]`` and the sampled ids ``[...]``."""
        return torch.cat([topk_ids, sampled_ids.unsqueeze(-1)], dim=-1)

    @staticmethod
    def candidates(values: torch.Tensor) -> torch.Tensor:
        """The top-k candidates' columns ``[..., k]``."""
        return values[..., :-1]

    @staticmethod
    def sampled(values: torch.Tensor) -> torch.Tensor:
        """The sampled token's column ``[...]``."""
        return values[..., -1]


@dataclass
class Rollouts:
    """A batch of sampled responses, right-padded, with what the student saw while sampling.

    ``topk_ids``/``topk_logprobs`` are the student's top-k candidates S_t and their
    log-probs (temperature 1) at each response position, recorded during generation.
    """

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor  # [B, T] long, 0 beyond each length
    lengths: torch.Tensor  # [B] long
    topk_ids: torch.Tensor  # [B, T, k] long
    topk_logprobs: torch.Tensor  # [B, T, k] float32
    sampled_logprobs: torch.Tensor  # [B, T] float32, the student's log-prob of each sampled token
    finish_reasons: list[str]

    @property
    def mask(self) -> torch.Tensor:
        """Boolean ``[B, T]``: true on valid response positions."""
        positions = torch.arange(self.response_ids.shape[1], device=self.lengths.device)
        return positions.unsqueeze(0) < self.lengths.unsqueeze(1)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, index: slice | list[int]) -> Rollouts:
        """A sub-batch (rows by slice or list of indices), trimmed to its longest response."""
        rows = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        idx = torch.tensor(rows, dtype=torch.long)
        width = int(self.lengths[idx].max()) if rows else 0
        return Rollouts(
            prompt_ids=[self.prompt_ids[i] for i in rows],
            response_ids=self.response_ids[idx, :width],
            lengths=self.lengths[idx],
            topk_ids=self.topk_ids[idx, :width],
            topk_logprobs=self.topk_logprobs[idx, :width],
            sampled_logprobs=self.sampled_logprobs[idx, :width],
            finish_reasons=[self.finish_reasons[i] for i in rows],
        )

    @classmethod
    def from_responses(
        cls, prompt_ids: list[list[int]], responses: list[list[int]], finish_reasons: list[str]
    ) -> Rollouts:
        """Rollouts of generated token ids alone, with no top-k or log-probs recorded (all zero)."""
        width = max((len(r) for r in responses), default=0)
        response_ids = torch.zeros((len(responses), width), dtype=torch.long)
        for row, response in enumerate(responses):
            response_ids[row, : len(response)] = torch.tensor(response, dtype=torch.long)
        return cls(
            prompt_ids=[list(p) for p in prompt_ids],
            response_ids=response_ids,
            lengths=torch.tensor([len(r) for r in responses], dtype=torch.long),
            topk_ids=torch.zeros((len(responses), width, 0), dtype=torch.long),
            topk_logprobs=torch.zeros((len(responses), width, 0)),
            sampled_logprobs=torch.zeros((len(responses), width)),
            finish_reasons=list(finish_reasons),
        )

    def query_ids(self) -> torch.Tensor:
        """``[B, T, k + 1]`` ids the teacher is asked about (:class:`QueryLayout`)."""
        return QueryLayout.ids(self.topk_ids, self.response_ids)

    def responses(self) -> list[list[int]]:
        """Each response's token ids, without padding."""
        return [row[:n].tolist() for row, n in zip(self.response_ids, self.lengths.tolist(), strict=True)]


@dataclass
class GeneratedChunk:
    """The tokens some rows generated in decode steps [start, stop): position = decode step.

    A row that ended inside the chunk has fewer: its total length is ``lengths``.
    """

    rows: list[int]
    start: int
    lengths: torch.Tensor  # [b] each row's length so far
    tokens: torch.Tensor  # [b, stop - start]
    topk_ids: torch.Tensor  # [b, stop - start, k]
    topk_logprobs: torch.Tensor  # [b, stop - start, k]

    def query_ids(self) -> torch.Tensor:
        """``[b, stop - start, k + 1]`` ids the teacher is asked about (:class:`QueryLayout`)."""
        return QueryLayout.ids(self.topk_ids, self.tokens)


class GenerationMonitor(Protocol):
    """Watches generation chunk by chunk and may stop rows (truncation on drift)."""

    chunk_tokens: int

    def observe(self, chunk: GeneratedChunk) -> dict[int, int]:
        """Rows to stop now, each with the last position it keeps."""


@dataclass
class TeacherScores:
    """The teacher's view of every response position, conditioned on the student's prefix.

    A served teacher returns only its own top-K: the log-prob of an asked-about id
    outside it is an estimate (an upper bound), and ``query_exact`` marks which
    values are exact. ``None`` means all are.
    """

    topk_ids: torch.Tensor  # [B, T, k] long, sorted by log-prob, descending
    topk_logprobs: torch.Tensor  # [B, T, k] float32
    query_logprobs: torch.Tensor  # [B, T, Q] float32, log-probs of the ids that were asked about
    query_exact: torch.Tensor | None = None  # [B, T, Q] bool

    def to(self, device: torch.device | str) -> TeacherScores:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return TeacherScores(**{k: v.to(device) if v is not None else None for k, v in moved.items()})

    @staticmethod
    def assemble(parts: list[tuple[list[int], TeacherScores]], batch: int, width: int) -> TeacherScores:
        """Scores of a batch assembled from scores of some of its rows (each part trimmed to its own width)."""
        first = parts[0][1]

        def place(name: str) -> torch.Tensor | None:
            if getattr(first, name) is None:
                return None
            sample = getattr(first, name)
            out = torch.zeros((batch, width, sample.shape[-1]), dtype=sample.dtype)
            if name == "query_exact":
                out.fill_(True)
            for rows, part in parts:
                values = getattr(part, name)
                out[rows, : values.shape[1]] = values.cpu()
            return out

        return TeacherScores(**{f.name: place(f.name) for f in fields(TeacherScores)})


@dataclass(frozen=True)
class Sampling:
    """How to generate: temperature 0 is greedy; ``top_p`` < 1 samples from the nucleus;
    ``record_topk`` ids per position are kept.

    A process that generates rows ``[row_offset, row_offset + len(prompts))`` of a
    larger batch of ``batch_rows`` samples them exactly as one process generating the
    whole batch would.
    """

    max_new_tokens: int
    temperature: float = 1.0
    record_topk: int = 0
    seed: int = 0
    top_p: float = 1.0
    batch_rows: int | None = None
    row_offset: int = 0


class Teacher(Protocol):
    """Scores responses: top-k and the log-probs of requested ids at every response position.

    Optional capabilities are protocols of their own: :class:`OverlappedScoring`
    (score rows while the batch is still generating), :class:`Generator` (answer
    prompts, for evaluation), :class:`KnowsContextLength`.

    The class is built as ``cls(config)``; one that loads a model may also take ``setting``,
    the option that named the model, for its error messages (``opdctl eval`` passes ``--model``).
    """

    Config: ClassVar[type[BackendConfig]]
    rescores_prefix: ClassVar[bool]
    """True if its :meth:`stream` scores every chunk from the rollout's start again (a server that cannot reuse
    its cache for prompt log-probs): truncation on drift then costs a whole prefix per check."""

    def check(self, tokenizer: PreTrainedTokenizerBase, drift_k: int, loss_k: int) -> dict[str, str]:
        """Verify the teacher can serve a run: the student's tokenizer, the drift metric's top-k size
        (``prune.k``) and the loss's (``loss.k``); raise BackendError if not.

        Returns facts to show the user (``opdctl backends check``)."""

    def score(self, rollouts: Rollouts, query_ids: torch.Tensor, top_k: int) -> TeacherScores:
        """Score ``rollouts``; ``query_ids`` is ``[B, T, Q]``, ids whose log-probs are wanted."""

    def stream(self, prompts: list[list[int]]) -> TeacherStream:
        """Start scoring rollouts of these prompts chunk by chunk as they are generated."""

    def close(self) -> None:
        """Release models, connections and processes."""


class PendingScores(Protocol):
    """Scores whose computation is under way."""

    def result(self) -> TeacherScores:
        """Wait for them; any failure fails the whole batch."""


@runtime_checkable
class OverlappedScoring(Protocol):
    """A teacher that takes rows as soon as they finish generating, when ``overlaps_generation`` is true."""

    overlaps_generation: bool

    def submit(self, rollouts: Rollouts, query_ids: torch.Tensor, top_k: int) -> PendingScores:
        """Start scoring ``rollouts`` (as :meth:`Teacher.score` would) and return at once."""


@runtime_checkable
class Generator(Protocol):
    """A model that answers token-id prompts (a student, or a teacher that can generate: used to evaluate it)."""

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> Rollouts:
        """One response per prompt; no top-k needs to be recorded unless ``sampling.record_topk``."""


@runtime_checkable
class KnowsContextLength(Protocol):
    """A model that tells how many prompt plus response tokens it takes (evaluation caps lengths by it)."""

    def context_length(self) -> int | None:
        """The context length in tokens, or None if it has no known limit."""


class TeacherStream(Protocol):
    """Scores a batch of rollouts incrementally; rows left out of a call are done."""

    def extend(
        self, rows: list[int], tokens: torch.Tensor, lengths: torch.Tensor, query_ids: torch.Tensor, top_k: int
    ) -> TeacherScores:
        """Scores of the next ``tokens`` ``[b, c]`` of ``rows`` (``lengths`` ``[b]`` of them are valid)."""

    def close(self) -> None:
        """Release the stream's cache or connections."""


@dataclass(frozen=True)
class EngineSetup:
    """What a rollout engine is told about the student it generates for."""

    model: str  # where the student's weights come from (a directory or hub id)
    dtype: str  # the training weights' dtype, e.g. "float32"
    lora: bool  # the student trains LoRA adapters
    seed: int = 0


class RolloutEngine(Protocol):
    """Generates a trained student's rollouts elsewhere (``student.rollout``), taking its weights after every update.

    Registered in the entry-point group ``opdctl.rollout_engines``; ``Config`` is the
    schema of its options (``student.vllm``).
    """

    Config: ClassVar[type[BaseModel]]
    shared: ClassVar[bool]  # one engine for every training process: process 0 pushes weights, once at start too

    def __init__(self, options: BaseModel, setup: EngineSetup) -> None: ...

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> Rollouts:
        """Rollouts with the student's top-k (``sampling.record_topk``) and sampled-token log-probs."""

    def sync(self, model: torch.nn.Module) -> None:
        """Take the student's current weights (or LoRA adapters)."""

    def close(self) -> None:
        """Release the engine."""


class Student(Protocol):
    """Generates rollouts and gives differentiable log-probs of a trainable policy."""

    Config: ClassVar[type[BackendConfig]]
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    device: torch.device

    @staticmethod
    def load_tokenizer(config: BackendConfig) -> PreTrainedTokenizerBase:
        """The student's tokenizer alone, without loading the model."""

    def generate(
        self,
        prompts: list[list[int]],
        sampling: Sampling,
        on_finished: FinishedCallback | None = None,
        monitor: GenerationMonitor | None = None,
    ) -> Rollouts:
        """Sample one response per prompt (stops at EOS or ``max_new_tokens``).

        ``on_finished(rows, rollouts)`` is called as rows finish, with those rows'
        rollouts; a ``monitor`` sees each chunk of new tokens and may stop rows."""

    def logprobs(self, rollouts: Rollouts, query_ids: torch.Tensor) -> torch.Tensor:
        """``[B, T, Q]`` log-probs (temperature 1, with gradient) of ``query_ids`` at each position."""

    def distribute(self, world: World) -> None:
        """Train with the other processes of ``world`` (before the optimizer is built on the parameters)."""

    def gradient_sync(self, enabled: bool) -> AbstractContextManager:
        """Within it, backward does not (``enabled=False``) reduce gradients across processes."""

    def unsharded(self) -> AbstractContextManager:
        """Within it, every process holds the whole model (all processes enter together)."""

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """The whole weights on process 0 when sharded (every process calls it), else None."""

    def save(self, directory: str, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the model (``state`` when given) and tokenizer in Hugging Face format."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state process 0 writes (every process calls it)."""

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore an :meth:`optimizer_state` in every process."""

    def weights_updated(self) -> None:
        """Called after each step's optimizer updates (rollout engines resynchronise here)."""

    def close(self) -> None:
        """Release models and processes."""
