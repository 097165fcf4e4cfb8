"""opdctl's built-in backends: local Hugging Face transformers models.

Registered through entry points in pyproject.toml like any third-party plugin.
"""

from .student import HFStudent
from .teacher import HFTeacher

__all__ = ["HFStudent", "HFTeacher"]
