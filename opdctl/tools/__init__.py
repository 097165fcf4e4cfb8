"""Commands that make or tune models around a run: ``opdctl sft``, ``opdctl shrink``, ``opdctl calibrate``."""
