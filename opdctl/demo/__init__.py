"""The embedded default: a synthetic long-horizon task and tiny local models, no downloads."""

from __future__ import annotations

DEMO_PREFIX = "demo:"
DEMO_MODELS = ("teacher", "student")


def resolve_demo(ref: str) -> str:
    """Map ``demo:teacher`` / ``demo:student`` to their cached directories (building them once)."""
    if not ref.startswith(DEMO_PREFIX):
        return ref
    name = ref[len(DEMO_PREFIX) :]
    if name not in DEMO_MODELS:
        from opdctl.errors import BackendError

        raise BackendError(f"unknown demo model {ref!r}: use demo:teacher or demo:student")
    from opdctl.demo.models import ensure_models

    return str(ensure_models() / name)
