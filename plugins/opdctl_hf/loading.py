"""Loading transformers models and tokenizers with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from opdctl.config.schema import BackendConfig
from opdctl.errors import BackendError, reason
from opdctl.models.sources import resolve_model
from opdctl.runs.ownership import directory_kind
from opdctl.runs.rundir import RunDir

ADAPTER_FILE = "adapter_config.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFConfig(BackendConfig):
    """Keys shared by the Hugging Face teacher and student."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto is bfloat16 on CUDA (float32 for a trained student), float32 on CPU."
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto picks cuda when available.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow the model repository's own code.")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager, flash_attention_2.")
    logprob_chunk: int = Field(2048, ge=1, description="Token positions per full-vocabulary log-softmax block.")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"device {name!r} requested but CUDA is not available (set device: cpu or auto)")
    return device


def pick_dtype(name: str, device: torch.device, trainable: bool) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" and not trainable else torch.float32


def load_tokenizer(setting: str, config: HFConfig) -> PreTrainedTokenizerBase:
    source = _source(setting, config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    except Exception as exc:
        raise BackendError(f"{setting}={config.model!r}: cannot load its tokenizer ({reason(exc)})") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(setting: str, config: HFConfig, trainable: bool) -> torch.nn.Module:
    """The model on its device, in eval mode (the trainer switches the student to train)."""
    device = pick_device(config.device)
    source = _source(setting, config)
    kwargs = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
    loader = AutoModelForCausalLM
    if (Path(source) / ADAPTER_FILE).is_file():  # a LoRA checkpoint: its base model plus the adapters
        from peft import AutoPeftModelForCausalLM

        loader, kwargs = AutoPeftModelForCausalLM, {**kwargs, "is_trainable": trainable}
    try:
        model = loader.from_pretrained(
            source,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
            dtype=pick_dtype(config.dtype, device, trainable),
            **kwargs,
        )
    except Exception as exc:
        raise BackendError(f"{setting}={config.model!r}: cannot load the model ({reason(exc)})") from exc
    return model.to(device).eval()


def _source(setting: str, config: HFConfig) -> str:
    source = resolve_model(config.model)
    looks_local = source.startswith((".", "/", "~")) or Path(source).exists()
    found = [(Path(source).expanduser() / name).is_file() for name in ("config.json", ADAPTER_FILE)]
    if looks_local and not any(found):
        _refuse_a_run(setting, config.model, Path(source).expanduser())
        raise BackendError(
            f"{setting}={config.model!r}: no Hugging Face model at {source} "
            "(expected a directory with config.json; give a local model directory, a .gguf file, a hub id, "
            "pkg:PACKAGE/FILE, demo:teacher / demo:student, or smollm2:teacher / smollm2:student)"
        )
    return str(Path(source).expanduser()) if looks_local else source


def _refuse_a_run(setting: str, model: str, path: Path) -> None:
    """A training run's directory given as a model: name its newest complete checkpoint."""
    if directory_kind(path) != "run":
        return
    latest = RunDir(path).latest_checkpoint()
    if latest is None:
        raise BackendError(f"{setting}={model!r} is a training run with no complete checkpoint yet: give a model")
    raise BackendError(f"{setting}={model!r} is a training run: give one of its checkpoints, e.g. {latest[1]}")


def context_length(model: torch.nn.Module) -> int | None:
    """The longest prompt plus response the model was built for (max_position_embeddings), if it says."""
    return getattr(model.config, "max_position_embeddings", None)


def eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation config EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids


def check_same_tokenizer(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> None:
    """Teacher and student must map the same strings to the same ids (for now)."""
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    if s_vocab == t_vocab:
        return
    only_student = sorted(set(s_vocab) - set(t_vocab))
    only_teacher = sorted(set(t_vocab) - set(s_vocab))
    differing = sorted(tok for tok in set(s_vocab) & set(t_vocab) if s_vocab[tok] != t_vocab[tok])
    if only_student:
        example = f"token {only_student[0]!r} exists only in the student's"
    elif only_teacher:
        example = f"token {only_teacher[0]!r} exists only in the teacher's"
    else:
        tok = differing[0]
        example = f"token {tok!r} has id {s_vocab[tok]} for the student and {t_vocab[tok]} for the teacher"
    raise BackendError(
        f"teacher and student tokenizers differ ({len(s_vocab)} vs {len(t_vocab)} tokens; {example}): "
        "opdctl needs the same tokenizer for both; pick a teacher from the student's model family"
    )
