"""A teacher served by vLLM: prompt log-probs through the OpenAI-compatible API.

Sequences go to the server as token-id lists (never text), ``max_tokens=1`` and
``prompt_logprobs=K``; each position comes back keyed by token id with the
actual token (at its true rank) and the server's top-K. The student's top-k
candidates that are not in the teacher's top-K have no exact log-prob: they get
the smallest returned log-prob at that position (an upper bound) and are marked
inexact, so that ``loss.absent_candidates`` can use the bound or drop them.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, replace

import torch
from pydantic import Field
from transformers import PreTrainedTokenizerBase

from opdctl.backends.served import PrefixStream, sparse_scores
from opdctl.backends.types import Rollouts, Sampling, TeacherScores
from opdctl.config.schema import BackendConfig
from opdctl.errors import BackendError

from .client import PositionLogprobs, ServerClient

DEFAULT_LOGPROBS = 20  # vLLM's default --max-logprobs
PROBE_TEXTS = ("Let x = 3/4. Then 2x + 1 = \\frac{5}{2}.", "  indented\tand\nnew lines", "数学 ∑ é 🙂", "12345 + 67890")


class VLLMTeacherConfig(BackendConfig):
    """A teacher served by `vllm` (OpenAI-compatible API with prompt log-probs)."""

    backend: str = Field("vllm", description="Installed backend name (see `opdctl backends`).")
    model: str = Field("teacher", description="Served model name (vllm --served-model-name).")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="The server's OpenAI-compatible URL.")
    api_key_env: str = Field("OPDCTL_TEACHER_API_KEY", description="Environment variable holding the API key, if any.")
    timeout: float = Field(600.0, gt=0, allow_inf_nan=False, description="Seconds before one request counts as failed.")
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    sequences_per_request: int = Field(4, ge=1, description="Rollouts sent in one request.")
    logprobs: int | None = Field(
        None,
        ge=1,
        description="K, prompt log-probs per position; null: max(20, prune.k, loss.k). "
        "The server needs --max-logprobs >= K.",
    )
    overlap: bool = Field(True, description="Send each rollout for scoring as soon as it finishes generating.")
    retries: int = Field(6, ge=0, description="Retries of a failed request (connection error, timeout, 429, 5xx).")
    backoff: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="First retry delay in seconds; doubles each retry, at most 30 s."
    )


@dataclass
class PendingScores:
    """Scores of a batch whose requests are in flight."""

    parts: list[tuple[list[int], Future[list[list[PositionLogprobs]]]]]
    rollouts: Rollouts
    query_ids: torch.Tensor
    top_k: int
    k: int

    def result(self) -> TeacherScores:
        """Wait for every request; any failure fails the whole batch (no partial scores)."""
        entries: list[list[PositionLogprobs]] = [[] for _ in range(len(self.rollouts))]
        for rows, future in self.parts:
            for row, sequence in zip(rows, future.result(), strict=True):
                entries[row] = sequence
        return parse_scores(entries, self.rollouts, self.query_ids, self.top_k, self.k)


class VLLMTeacher:
    """Scores rollouts through a vLLM server, several sequences per request, requests in parallel."""

    Config = VLLMTeacherConfig
    rescores_prefix = True  # prompt log-probs bypass vLLM's prefix cache

    def __init__(self, config: VLLMTeacherConfig) -> None:
        self.config = config
        self.server = ServerClient(
            config.base_url,
            config.model,
            config.api_key_env,
            config.timeout,
            config.max_concurrency,
            config.retries,
            config.backoff,
        )
        self.k = config.logprobs or DEFAULT_LOGPROBS

    @property
    def overlaps_generation(self) -> bool:
        return self.config.overlap

    def check(self, tokenizer: PreTrainedTokenizerBase, drift_k: int, loss_k: int) -> dict[str, str]:
        """Probe the server: reachable, serves the model, admits K log-probs, tokenizes like the student."""
        started = time.perf_counter()
        served = self.server.served_models()
        if self.config.model not in served:
            raise BackendError(
                f"teacher.model={self.config.model!r} is not served at {self.config.base_url} "
                f"(it serves: {', '.join(served) or 'nothing'}): set teacher.model, or start vllm with "
                f"--served-model-name {self.config.model}"
            )
        latency = time.perf_counter() - started
        self.k = self.config.logprobs or max(DEFAULT_LOGPROBS, drift_k, loss_k)
        if self.k < drift_k:
            raise BackendError(
                f"teacher.logprobs={self.k} is below the drift metric's k={drift_k}: raise teacher.logprobs"
            )
        limit = self.server.max_logprobs()
        if limit is not None and limit < self.k:
            raise BackendError(
                f"the teacher server allows {limit} log-probs per position but this run needs {self.k}: restart vllm "
                f"with --max-logprobs {self.k} (or lower teacher.logprobs, prune.k and loss.k)"
            )
        template = _compare_tokenizers(self.server, tokenizer)
        return {
            "server": self.config.base_url,
            "model": self.config.model,
            "max logprobs": "no limit" if limit is None else str(limit),
            "log-probs requested (K)": str(self.k),
            "tokenizer": f"same as the student's on {len(PROBE_TEXTS)} probe strings",
            "chat template": template,
            "latency": f"{latency * 1000:.0f} ms",
        }

    def submit(self, rollouts: Rollouts, query_ids: torch.Tensor, top_k: int) -> PendingScores:
        """Send the rollouts' requests now; ``result()`` collects them."""
        sequences = [p + r for p, r in zip(rollouts.prompt_ids, rollouts.responses(), strict=True)]
        size = self.config.sequences_per_request
        parts = []
        for start in range(0, len(sequences), size):
            rows = list(range(start, min(start + size, len(sequences))))
            parts.append((rows, self.server.submit([sequences[i] for i in rows], self.k)))
        return PendingScores(parts, rollouts, query_ids, top_k, self.k)

    def score(self, rollouts: Rollouts, query_ids: torch.Tensor, top_k: int) -> TeacherScores:
        return self.submit(rollouts, query_ids, top_k).result()

    def stream(self, prompts: list[list[int]]) -> PrefixStream:
        """Score chunk by chunk: each chunk's request re-sends the rollout so far (see docs/vllm.md)."""
        return PrefixStream(self.score, prompts)

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> Rollouts:
        """Let the served model answer prompts itself (used to evaluate it).

        One request per prompt, ``max_concurrency`` in flight; prompt i is sampled with
        seed ``sampling.seed + i``, so its answer does not depend on the other prompts.
        No top-k or log-probs are recorded.
        """
        if sampling.record_topk:
            raise BackendError("the vllm backend generates without recording the top-k: set record_topk=0")
        futures = [
            self.server.submit_completion(prompt, replace(sampling, seed=(sampling.seed + row) % 2**31))
            for row, prompt in enumerate(prompts)
        ]
        try:
            completions = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return Rollouts.from_responses(
            prompts, [c.token_ids for c in completions], [c.finish_reason for c in completions]
        )

    def context_length(self) -> int | None:
        """The served model's context length; an error if the server is down or does not serve the model."""
        return self.server.context_length()

    def close(self) -> None:
        self.server.close()


def parse_scores(
    entries: list[list[PositionLogprobs]], rollouts: Rollouts, query_ids: torch.Tensor, top_k: int, k: int
) -> TeacherScores:
    """Turn vLLM's token-id-keyed prompt log-probs into TeacherScores over the response positions."""
    positions = []
    for row, sequence in enumerate(entries):
        start, length = len(rollouts.prompt_ids[row]), int(rollouts.lengths[row])
        positions.append(
            [
                {int(token): (entry["logprob"], entry["rank"]) for token, entry in position.items()}
                for position in sequence[start : start + length]
            ]
        )
    return sparse_scores(positions, rollouts, query_ids, top_k, k)


def _compare_tokenizers(server: ServerClient, tokenizer: PreTrainedTokenizerBase) -> str:
    """Error if the server tokenizes probe strings differently; describe the chat template's parity."""
    for text in PROBE_TEXTS:
        theirs, ours = server.tokenize(text=text), tokenizer.encode(text, add_special_tokens=False)
        if theirs != ours:
            raise BackendError(
                f"the teacher server tokenizes {text!r} as {theirs[:12]} but the student as {ours[:12]}: "
                "opdctl needs the same tokenizer for both; serve a teacher from the student's model family"
            )
    if not tokenizer.chat_template:
        return "the student has none"
    messages = [{"role": "user", "content": PROBE_TEXTS[0]}]
    ours = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    same = server.tokenize(messages=messages) == ours
    return "same as the student's" if same else "differs from the student's (prompts use the student's template)"
