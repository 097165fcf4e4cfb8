"""opdctl: drift-aware on-policy distillation (Prune-OPD) of reasoning language models."""

from opdctl.threads import apply_defaults as _apply_thread_defaults

__version__ = "0.1.0"

_apply_thread_defaults()  # before torch loads: see opdctl/threads.py
