"""A local transformers model as the student: generates rollouts and is trained in place."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import PreTrainedTokenizerBase

from opdctl.backends.chunked import generate_in_chunks
from opdctl.backends.protocols import GenerationMonitor, RolloutEngine
from opdctl.backends.types import EngineSetup, FinishedCallback, Rollouts, Sampling
from opdctl.config.files import format_validation_error
from opdctl.config.schema import BackendConfig
from opdctl.distributed import World
from opdctl.errors import BackendError
from opdctl.plugins import ROLLOUT_ENGINES

from . import sharding
from .loading import HFConfig, context_length, eos_ids, load_model, load_tokenizer
from .sampling import sample
from .sequences import Packed, chunked_logprobs, pack, response_hidden
from .teacher import FrozenBaseTeacher, HFTeacher, HFTeacherConfig


class LoraOptions(BaseModel):
    """Train low-rank adapters (peft) instead of every weight."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Scaling numerator (alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False, description="Adapter dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules that get adapters.")


class HFStudentConfig(HFConfig):
    """A local transformers student, trained in place."""

    autocast: Literal["auto", "none", "bfloat16", "float16"] = Field(
        "auto", description="Mixed precision for forward passes; auto is bfloat16 on CUDA, none on CPU."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in backward: about half the update's peak memory for ~15% more update "
        "time (docs/real-models.md). Turn it on when the update runs out of memory.",
    )
    rollout: str = Field(
        "hf",
        description="Who generates rollouts: hf (this process, with transformers) or an installed rollout engine "
        "(opdctl backends): vllm-colocate (an in-process vLLM), vllm-server (a vLLM server).",
    )
    vllm: dict[str, Any] = Field(
        default_factory=dict, description="The rollout engine's options (its section below); unused with hf."
    )
    lora: LoraOptions | None = Field(None, description="Train LoRA adapters (peft); null trains every weight.")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Under torchrun: a whole copy per process (DistributedDataParallel) or weights, gradients and "
        "optimizer state sharded across processes (FSDP2, one unit per decoder layer); one process ignores it.",
    )

    @model_validator(mode="before")
    @classmethod
    def _engine_options(cls, data: Any) -> Any:
        """The engine must be installed; it validates its options (and fills in their defaults) by its own schema."""
        if (
            not isinstance(data, dict)
            or data.get("rollout", "hf") in ("hf", None)
            or not isinstance(data["rollout"], str)
        ):
            return data
        schema = ROLLOUT_ENGINES.get(data["rollout"]).Config
        try:
            options = schema.model_validate(data.get("vllm") or {})
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, schema, prefix="student.vllm")) from None
        return {**data, "vllm": options.model_dump()}

    @model_validator(mode="after")
    def _check_parallel(self) -> HFStudentConfig:
        if self.parallel == "fsdp" and self.lora is not None:
            raise ValueError("student.parallel=fsdp does not train LoRA students: set student.parallel=ddp")
        if self.parallel == "fsdp" and self.rollout != "hf":
            raise ValueError(
                f"student.parallel=fsdp does not push sharded weights to vLLM (student.rollout={self.rollout}): "
                "set student.rollout=hf or student.parallel=ddp"
            )
        return self


class PolicyLogprobs(torch.nn.Module):
    """The student's forward passes as one module, so DistributedDataParallel or FSDP can wrap it."""

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
        query_lp, _, _ = chunked_logprobs(self.model, hidden, mask, query_ids, self.logprob_chunk)
        return query_lp

    def generate(
        self,
        prompts: list[list[int]],
        sampling: Sampling,
        eos: Collection[int],
        pad_id: int,
        on_finished: FinishedCallback | None,
        monitor: GenerationMonitor | None,
    ) -> Rollouts:
        """Sampling (:func:`sample`) as a forward method: FSDP registers it, so it enters through the root."""
        return sample(self.model, prompts, sampling, eos, pad_id, on_finished, monitor)


class HFStudent:
    """Generation with a KV cache; differentiable log-probs for the loss; HF-format checkpoints."""

    Config = HFStudentConfig

    def __init__(self, config: HFStudentConfig) -> None:
        self.config = config
        self.tokenizer = load_tokenizer("student.model", config)
        self.model = with_lora(load_model("student.model", config, trainable=True), config)
        self.device = next(self.model.parameters()).device
        self.world = World()
        self.engine = rollout_engine(config, self.model)
        if self.engine is not None and self.engine.shared:
            self.engine.sync(self.model)  # a shared server may hold other weights (a base model, an older run)
        self.eos_ids = eos_ids(self.model, self.tokenizer)
        if config.gradient_checkpointing:  # transformers >= 5.x renamed it; the old name warns
            enable = getattr(self.model, "activation_checkpointing_enable", self.model.gradient_checkpointing_enable)
            enable()
        self.policy = PolicyLogprobs(self.model, config.logprob_chunk)
        self.replicas: torch.nn.parallel.DistributedDataParallel | None = None
        self.sharded, self._whole = False, False

    def distribute(self, world: World) -> None:
        """Average gradients across the training processes: DistributedDataParallel, or FSDP shards.

        Call before building the optimizer: FSDP replaces the parameters with their shards.
        """
        self.world = world
        if not world.distributed:
            return
        if self.config.parallel == "fsdp":
            sharding.shard(self.policy, self.model, self.device)
            self.sharded = True
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.replicas = torch.nn.parallel.DistributedDataParallel(self.policy, device_ids=ids)

    def gradient_sync(self, enabled: bool) -> AbstractContextManager:
        """Skip the gradient all-reduce (reduce-scatter) for all but the last micro-batch of a step."""
        if enabled:
            return nullcontext()
        if self.sharded:
            return sharding.no_reduce(self.policy)
        return self.replicas.no_sync() if self.replicas is not None else nullcontext()

    @contextmanager
    def unsharded(self) -> Iterator[None]:
        """The whole model in every process for the duration (all take part on entry); a no-op unless sharded."""
        if not self.sharded or self._whole:
            yield
            return
        self._whole = True
        try:
            with sharding.unsharded(self.policy):
                yield
        finally:
            self._whole = False

    @staticmethod
    def load_tokenizer(config: HFStudentConfig) -> PreTrainedTokenizerBase:
        return load_tokenizer("student.model", config)

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
        if self.engine is not None:
            if monitor is not None:
                rollouts = generate_in_chunks(self.engine, prompts, sampling, monitor)
            else:
                rollouts = self.engine.generate(prompts, sampling)
            if on_finished:
                on_finished(list(range(len(rollouts))), rollouts)
            return rollouts
        self.model.eval()
        with torch.no_grad(), self.unsharded(), self._autocast():
            pad = self.tokenizer.pad_token_id
            return self.policy.generate(prompts, sampling, self.eos_ids, pad, on_finished, monitor)

    def logprobs(self, rollouts: Rollouts, query_ids: torch.Tensor) -> torch.Tensor:
        # Eval mode keeps dropout off, so these are the sampling policy's log-probs;
        # transformers' gradient checkpointing only runs in train mode.
        self.model.train(self.config.gradient_checkpointing)
        width = rollouts.response_ids.shape[1]
        p = pack(rollouts, self.tokenizer.pad_token_id, self.device)
        mask, query = rollouts.mask.to(self.device), query_ids[:, :width].to(self.device)
        with self._autocast():
            forward = self.replicas if self.replicas is not None else self.policy
            return forward(p.input_ids, p.attention_mask, p.position_ids, p.prompt_width, mask, query)

    def frozen_teacher(self, config: BackendConfig) -> HFTeacher | None:
        """With LoRA the base weights never train: they score as the teacher (adapters off), no second copy."""
        if self.config.lora is None or not isinstance(config, HFTeacherConfig):
            return None
        return FrozenBaseTeacher(config, self.model, self.tokenizer)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def context_length(self) -> int | None:
        """Prompt plus response tokens the model takes (used to cap evaluation lengths)."""
        return context_length(self.model)

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """Sharded weights gathered whole on process 0 (every process must call it); None unless sharded."""
        return sharding.full_state(self.model) if self.sharded else None

    def save(self, directory: str, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the model (``state``, from :meth:`full_state`, when sharded) and tokenizer in HF format."""
        self.model.save_pretrained(directory, state_dict=state)
        self.tokenizer.save_pretrained(directory)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What process 0 saves of ``optimizer``; when sharded every process must call it."""
        return sharding.full_optimizer_state(self.model, optimizer) if self.sharded else optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore what :meth:`optimizer_state` returned (every process loads the whole state)."""
        if self.sharded:
            sharding.load_optimizer_state(self.model, optimizer, state)
        else:
            optimizer.load_state_dict(state)

    def weights_updated(self) -> None:
        """Push the new weights to the vLLM engine (transformers generation reads them directly).

        Every process has its own colocated engine; a shared server is updated by process 0 alone.
        """
        if self.engine is None:
            return
        shared = self.engine.shared
        if not shared or self.world.main:
            self.engine.sync(self.model)
        if shared:
            self.world.barrier()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        del self.model


def with_lora(model: torch.nn.Module, config: HFStudentConfig) -> torch.nn.Module:
    """Wrap the model in LoRA adapters (peft), or reload the adapters of a LoRA checkpoint."""
    if config.lora is None:
        return model
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError as exc:
        raise BackendError("student.lora needs peft: pip install 'opdctl[lora]'") from exc
    if isinstance(model, PeftModel):  # a LoRA checkpoint: transformers attached its adapters
        return model
    lora = config.lora
    options = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
    return get_peft_model(model, options)


def rollout_engine(config: HFStudentConfig, model: torch.nn.Module) -> RolloutEngine | None:
    """The engine named by ``student.rollout`` (None: this process generates with transformers)."""
    if config.rollout == "hf":
        return None
    engine = ROLLOUT_ENGINES.get(config.rollout)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    setup = EngineSetup(getattr(model, "name_or_path", config.model), dtype, lora=config.lora is not None)
    return engine(engine.Config.model_validate(config.vllm), setup)
