"""opdctl backends that talk to a vLLM server through its OpenAI-compatible API.

Registered through entry points in pyproject.toml like any third-party plugin.
"""

from .teacher import VLLMTeacher

__all__ = ["VLLMTeacher"]
