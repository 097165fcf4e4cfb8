"""The recipes of the skilled SmolLM2 pair (:mod:`opdctl.models.skilled`): what ``opdctl sft`` made of the
base model, and the command that makes and bundles their adapters again::

    python -m opdctl.tools.skilled [teacher|student]

A bundled adapter's directory is named by a digest of its recipe, so a changed recipe (or word-problem
generator: bump RECIPE_VERSION) is caught by the test that every recipe ships its adapter.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from opdctl.models.gguf import resolve_file
from opdctl.models.skilled import BASE, BUNDLED
from opdctl.tools.sft import ADAPTER, SFTSettings, sft

RECIPE_VERSION = "v1"  # bump when the word problems change: the same settings would then train other models
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


def train_adapter(name: str, out: Path) -> Path:
    """Fine-tune the base model with recipe ``name``; returns its adapter directory."""
    sft(resolve_file(BASE), out, RECIPES[name])
    return out / ADAPTER


def bundle(adapter: Path, name: str) -> Path:
    """Ship ``adapter`` as recipe ``name``'s bundled adapter, in half precision (half the size)."""
    from safetensors.torch import load_file, save_file

    for old in BUNDLED.glob(f"{name}-*"):
        shutil.rmtree(old)
    target = BUNDLED / digest(name)
    target.mkdir(parents=True)
    weights = {key: value.half() for key, value in load_file(adapter / "adapter_model.safetensors").items()}
    save_file(weights, target / "adapter_model.safetensors")
    shutil.copy(adapter / "adapter_config.json", target / "adapter_config.json")
    (target / "recipe.json").write_text(json.dumps({"recipe": repr(RECIPES[name]), "built": time.ctime()}) + "\n")
    return target


def main() -> None:
    """Train every recipe (or those named) and bundle its adapter."""
    for name in sys.argv[1:] or RECIPES:
        with tempfile.TemporaryDirectory() as scratch:
            print(bundle(train_adapter(name, Path(scratch) / "sft"), name))


if __name__ == "__main__":
    main()
