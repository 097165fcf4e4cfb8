"""A vLLM OpenAI-compatible server seen through the `openai` client: prompt log-probs, probes.

Retries follow :class:`opdctl.backends.served.RetryPolicy`, as for every served model.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import openai

from opdctl.backends.served import RetryPolicy
from opdctl.backends.types import Sampling
from opdctl.errors import BackendError, reason

T = TypeVar("T")
PositionLogprobs = dict[str, dict[str, Any]] | None  # {"<token id>": {"logprob", "rank", ...}} per position


class Completion(NamedTuple):
    token_ids: list[int]
    finish_reason: str  # "eos" or "length"


class ServerClient:
    """Requests to one vLLM server, with bounded concurrency and retries on transient failures."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str,
        timeout: float,
        max_concurrency: int,
        retries: int,
        backoff: float,
    ) -> None:
        self.base_url, self.model = base_url.rstrip("/"), model
        self.policy = RetryPolicy(retries, backoff)
        api_key = os.environ.get(api_key_env) or "EMPTY"
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self.root = self.client.with_options(base_url=re.sub(r"/v1$", "", self.base_url))
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="opdctl-teacher")

    # scoring -----------------------------------------------------------------

    def prompt_logprobs(self, sequences: list[list[int]], k: int) -> list[list[PositionLogprobs]]:
        """For each token-id sequence, one entry per position (the first is None) with its top-k."""

        def request() -> list[list[PositionLogprobs]]:
            response = self.client.completions.create(
                model=self.model, prompt=sequences, max_tokens=1, temperature=0.0, extra_body={"prompt_logprobs": k}
            )
            return [choice.prompt_logprobs for choice in response.choices]

        return self.with_retries(request, f"to score {len(sequences)} rollout(s)")

    def complete(self, prompt: list[int], sampling: Sampling) -> Completion:
        """One sampled continuation of a token-id prompt: its token ids and why it stopped."""

        def request() -> Completion:
            response = self.client.completions.create(
                model=self.model,
                prompt=prompt,
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                extra_body={"return_token_ids": True},
            )
            choice = response.choices[0]
            ids = (choice.model_extra or {}).get("token_ids")
            if ids is None:
                raise BackendError(
                    f"server {self.base_url} returned no token ids for a completion: opdctl needs vllm >= 0.10.2 "
                    "(return_token_ids)"
                )
            return Completion(list(ids), "eos" if choice.finish_reason == "stop" else "length")

        return self.with_retries(request, "to generate a completion")

    def submit_completion(self, prompt: list[int], sampling: Sampling) -> Future[Completion]:
        """Queue :meth:`complete` on the request pool."""
        return self.pool.submit(contextvars.copy_context().run, self.complete, prompt, sampling)

    def submit(self, sequences: list[list[int]], k: int) -> Future[list[list[PositionLogprobs]]]:
        """Queue a request; it runs in the caller's context, so retries report where the caller reports."""
        return self.pool.submit(contextvars.copy_context().run, self.prompt_logprobs, sequences, k)

    def with_retries(self, call: Callable[[], T], what: str) -> T:
        """Run ``call`` under the teacher's retry policy (:class:`opdctl.backends.served.RetryPolicy`)."""
        return self.policy.run(call, what, f"teacher server {self.base_url}")

    # probes --------------------------------------------------------------------

    def served_models(self) -> list[str]:
        try:
            return [m.id for m in self.client.models.list().data]
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise BackendError(
                f"cannot reach the teacher server at {self.base_url} ({reason(exc)}): start it, or fix teacher.base_url"
            ) from exc

    def context_length(self) -> int | None:
        """The served model's context length (vllm's max_model_len); an error if it is not served there."""
        try:
            models = self.client.models.list().data
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise BackendError(
                f"cannot reach the vLLM server at {self.base_url} ({reason(exc)}): start it, or fix its URL"
            ) from exc
        for model in models:
            if model.id == self.model:
                return (model.model_extra or {}).get("max_model_len")
        served = ", ".join(m.id for m in models) or "nothing"
        raise BackendError(
            f"model {self.model!r} is not served at {self.base_url} (it serves: {served}): "
            "use the name given to vllm's --served-model-name"
        )

    def max_logprobs(self) -> int | None:
        """The server's --max-logprobs, read from its refusal of an absurd request (None if it has no limit)."""
        try:
            self.client.completions.create(
                model=self.model, prompt=[[0]], max_tokens=1, extra_body={"prompt_logprobs": 10**9}
            )
        except openai.BadRequestError as exc:
            match = re.search(r"max allowed: (\d+)", str(exc))
            if match:
                return int(match.group(1))
            raise BackendError(
                f"teacher server {self.base_url} refused a prompt_logprobs request: {reason(exc)}"
            ) from exc
        return None

    def tokenize(self, text: str | None = None, messages: list[dict[str, str]] | None = None) -> list[int]:
        body: dict[str, Any] = {"model": self.model}
        if messages is not None:
            body.update(messages=messages, add_generation_prompt=True)
        else:
            body.update(prompt=text, add_special_tokens=False)
        return self.root.post("/tokenize", body=body, cast_to=object)["tokens"]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
