"""What opdctl asks of a teacher and a student backend, and of a rollout engine.

A backend is a class registered under an entry point (:mod:`opdctl.plugins`) with a ``Config``
schema; optional capabilities are protocols of their own, checked with ``isinstance``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from opdctl.backends.types import EngineSetup, FinishedCallback, GeneratedChunk, Rollouts, Sampling, TeacherScores

if TYPE_CHECKING:
    from pydantic import BaseModel
    from transformers import PreTrainedTokenizerBase

    from opdctl.config.schema import BackendConfig
    from opdctl.distributed import World


class GenerationMonitor(Protocol):
    """Watches generation chunk by chunk and may stop rows (truncation on drift)."""

    chunk_tokens: int

    def observe(self, chunk: GeneratedChunk) -> dict[int, int]:
        """Rows to stop now, each with the last position it keeps."""


@runtime_checkable
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


@runtime_checkable
class Student(Protocol):
    """Generates rollouts and gives differentiable log-probs of a trainable policy.

    Training on several processes is a capability of its own (:class:`DataParallel`); a student
    without it trains in one process.
    """

    Config: ClassVar[type[BackendConfig]]
    tokenizer: PreTrainedTokenizerBase
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

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates (all weights, or the LoRA adapters)."""

    def vocab_size(self) -> int:
        """Rows of the output layer: the most candidates a top-k can hold."""

    def context_length(self) -> int | None:
        """Prompt plus response tokens the model takes, or None if it has no known limit."""

    def save(self, directory: str, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the model (``state``, from :meth:`DataParallel.full_state`, when given) and tokenizer."""

    def weights_updated(self) -> None:
        """Called after each step's optimizer updates (rollout engines resynchronise here)."""

    def close(self) -> None:
        """Release models and processes."""


@runtime_checkable
class DataParallel(Protocol):
    """A student that trains on several processes (torchrun): replicas or shards, and what checkpoints need.

    Without it, :mod:`opdctl.training.parallel` stands in for one process.
    """

    def distribute(self, world: World) -> None:
        """Train with the other processes of ``world`` (before the optimizer is built on the parameters)."""

    def gradient_sync(self, enabled: bool) -> AbstractContextManager:
        """Within it, backward does not (``enabled=False``) reduce gradients across processes."""

    def unsharded(self) -> AbstractContextManager:
        """Within it, every process holds the whole model (all processes enter together)."""

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """The whole weights on process 0 when sharded (every process calls it), else None."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state process 0 writes (every process calls it)."""

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore an :meth:`optimizer_state` in every process."""


@runtime_checkable
class LendsFrozenBase(Protocol):
    """A student whose starting weights stay frozen (a LoRA student's base) and can score as the teacher.

    ``teacher.model: student`` asks for it: self-distillation without a second copy in memory.
    """

    def frozen_teacher(self, config: BackendConfig) -> Teacher | None:
        """A teacher that scores with the frozen starting weights, configured by ``config`` (a teacher
        section of this backend); None when the student trains them (then a copy is loaded)."""
