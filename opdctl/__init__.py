"""opdctl: drift-aware on-policy distillation (Prune-OPD) of reasoning language models."""

__version__ = "0.1.0"
