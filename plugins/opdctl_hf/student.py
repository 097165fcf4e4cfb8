"""A local transformers model as the student: generates rollouts and is trained in place."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from pydantic import Field
from transformers import PreTrainedTokenizerBase

from opdctl.backends import FinishedCallback, GenerationMonitor, Rollouts, Sampling
from opdctl.distributed import World

from .loading import HFConfig, context_length, eos_ids, load_model, load_tokenizer
from .sampling import sample
from .sequences import Packed, gather_logprobs, pack, response_hidden


class HFStudentConfig(HFConfig):
    """A local transformers student, trained in place."""

    autocast: Literal["auto", "none", "bfloat16", "float16"] = Field(
        "auto", description="Mixed precision for forward passes; auto is bfloat16 on CUDA, none on CPU."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")


class PolicyLogprobs(torch.nn.Module):
    """The differentiable forward of training as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: torch.nn.Module, logprob_chunk: int) -> None:
        super().__init__()
        self.model, self.logprob_chunk = model, logprob_chunk

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        prompt_width: int,
        mask: torch.Tensor,
        query_ids: torch.Tensor,
    ) -> torch.Tensor:
        packed = Packed(input_ids, attention_mask, position_ids, prompt_width)
        hidden = response_hidden(self.model, packed, mask.shape[1])
        query_lp, _, _ = gather_logprobs(self.model, hidden, mask, query_ids, self.logprob_chunk)
        return query_lp


class HFStudent:
    """Generation with a KV cache; differentiable log-probs for the loss; HF-format checkpoints."""

    Config = HFStudentConfig

    def __init__(self, config: HFStudentConfig) -> None:
        self.config = config
        self.tokenizer = load_tokenizer("student", config)
        self.model = load_model("student", config, trainable=True)
        self.device = next(self.model.parameters()).device
        self.eos_ids = eos_ids(self.model, self.tokenizer)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.policy: torch.nn.Module = PolicyLogprobs(self.model, config.logprob_chunk)

    def distribute(self, world: World) -> None:
        """Average gradients across the training processes (DistributedDataParallel)."""
        if world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.policy = torch.nn.parallel.DistributedDataParallel(self.policy, device_ids=ids)

    def gradient_sync(self, enabled: bool) -> AbstractContextManager:
        """Skip the gradient all-reduce for all but the last micro-batch of a step."""
        if enabled or not isinstance(self.policy, torch.nn.parallel.DistributedDataParallel):
            return nullcontext()
        return self.policy.no_sync()

    @staticmethod
    def load_tokenizer(config: HFStudentConfig) -> PreTrainedTokenizerBase:
        return load_tokenizer("student", config)

    def _autocast(self) -> torch.autocast:
        name = self.config.autocast
        if name == "auto":
            name = "bfloat16" if self.device.type == "cuda" else "none"
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def generate(
        self,
        prompts: list[list[int]],
        sampling: Sampling,
        on_finished: FinishedCallback | None = None,
        monitor: GenerationMonitor | None = None,
    ) -> Rollouts:
        self.model.eval()
        with self._autocast():
            pad = self.tokenizer.pad_token_id
            return sample(self.model, prompts, sampling, self.eos_ids, pad, on_finished, monitor)

    def logprobs(self, rollouts: Rollouts, query_ids: torch.Tensor) -> torch.Tensor:
        # Eval mode keeps dropout off, so these are the sampling policy's log-probs;
        # transformers' gradient checkpointing only runs in train mode.
        self.model.train(self.config.gradient_checkpointing)
        width = rollouts.response_ids.shape[1]
        p = pack(rollouts, self.tokenizer.pad_token_id, self.device)
        mask, query = rollouts.mask.to(self.device), query_ids[:, :width].to(self.device)
        with self._autocast():
            return self.policy(p.input_ids, p.attention_mask, p.position_ids, p.prompt_width, mask, query)

    def context_length(self) -> int | None:
        """Prompt plus response tokens the model takes (used to cap evaluation lengths)."""
        return context_length(self.model)

    def save(self, directory: str) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def weights_updated(self) -> None:
        """Generation reads the trained weights directly: nothing to synchronise."""

    def close(self) -> None:
        del self.model
