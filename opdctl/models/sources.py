"""Where model weights come from besides a hub id or a model directory.

* ``demo:teacher`` / ``demo:student``: the embedded demo's tiny models (built once, cached).
* ``smollm2:teacher`` / ``smollm2:student``: SmolLM2-135M-Instruct taught the word problems
  (:mod:`opdctl.models.skilled`; merged once from shipped adapters, cached); ``@STRENGTH`` merges
  part of an adapter's update (``smollm2:teacher@0.4``).
* ``pkg:PACKAGE/FILE`` and ``.gguf`` files: converted once into a Hugging Face directory (:mod:`opdctl.models.gguf`).

Every source resolves to something ``from_pretrained`` takes: the rest of opdctl
loads it exactly as it loads a hub model.
"""

from __future__ import annotations


def resolve_model(ref: str) -> str:
    """A directory or hub id that ``from_pretrained`` loads, for any model reference opdctl accepts."""
    from opdctl.models.demo import DEMO_PREFIX, resolve_demo
    from opdctl.models.gguf import resolve_file
    from opdctl.models.skilled import PREFIX, resolve_skilled

    if ref.startswith(DEMO_PREFIX):
        return resolve_demo(ref)
    if ref.startswith(PREFIX):
        return resolve_skilled(ref)
    return resolve_file(ref)
