"""A run's Config from a YAML file (or the embedded demo) and dotted command-line overrides.

Every error is one line naming the full key path, the bad value and what is allowed
(:func:`format_validation_error`, also used by `opdctl eval` and the vLLM student's own settings).
"""

from __future__ import annotations

import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from opdctl.config.schema import BackendConfig, Config
from opdctl.errors import ConfigError
from opdctl.plugins import BACKENDS


def demo_config_text() -> str:
    """The embedded default: the demo config shipped inside the package."""
    return resources.files("opdctl.config").joinpath("demo.yaml").read_text()


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (first on line {seen[key] + 1}): keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, with one-line errors for a missing or malformed file."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory: pass a YAML file to -c")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass an existing YAML file to -c)")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:  # a number too long for Python to read
        raise ConfigError(
            f"{path} holds a number longer than Python reads ({sys.get_int_max_str_digits()} digits): "
            "give a shorter value"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"invalid YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (student:, teacher:, ...), not {type(data).__name__}"
        )
    return data


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``section.key=value`` in ``raw``; the value is parsed as YAML (numbers, booleans, lists, null)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. prune.threshold=0.8")
    path = key.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    except ValueError:  # a number too long for Python to read
        raise ConfigError(
            f"override {key.strip()}: a number of {len(text.strip())} characters is longer than "
            f"Python reads ({sys.get_int_max_str_digits()} digits): give a shorter value"
        ) from None
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part} is a value, not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve a config: the file (or the embedded demo), then the overrides, then validation."""
    raw = read_yaml(Path(path)) if path is not None else yaml.safe_load(demo_config_text())
    for override in overrides:
        apply_override(raw, override)
    return validate(raw)


RENAMED = {  # old key: new key (each word one meaning: docs/architecture.md)
    "budget.step": "budget.increment",
    "budget.shrink_patience": "budget.patience",
}


def validate(raw: dict[str, Any]) -> Config:
    """Build a Config from a plain mapping, resolving backend sections through their plugins."""
    _refuse_renamed(raw)
    raw = dict(raw)
    for kind in ("student", "teacher"):
        raw[kind] = _backend_section(kind, raw.get(kind, {} if kind == "student" else {"model": "demo:teacher"}))
    teachers = raw.get("teachers") or {}
    if not isinstance(teachers, dict):
        raise ConfigError(f"teachers must be a mapping of names to teacher sections, got {teachers!r}")
    raw["teachers"] = {
        name: _backend_section("teacher", section, f"teachers.{name}") for name, section in teachers.items()
    }
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Config)) from None
    return config


def _refuse_renamed(raw: dict[str, Any]) -> None:
    for old, new in RENAMED.items():
        section, key = old.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise ConfigError(f"config key {old} is now {new}: rename it (same meaning, same value)")


def _backend_section(kind: str, section: Any, key: str | None = None) -> BackendConfig:
    """Validate a teacher/student section (at config key ``key``, by default ``kind``) against the schema of the
    backend it names."""
    key = key or kind
    if isinstance(section, BackendConfig):
        return section
    if not isinstance(section, dict):
        raise ConfigError(f"{key} must be a mapping of keys (backend, model, ...), got {section!r}")
    name = section.get("backend", "hf")
    if not isinstance(name, str):
        raise ConfigError(f"{key}.backend={name!r}: must be a backend name such as 'hf'")
    schema = BACKENDS[kind].get(name, setting=f"{key}.backend").Config
    try:
        return schema.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, schema, prefix=key)) from None


def format_validation_error(exc: ValidationError, schema: type[BaseModel], prefix: str = "") -> str:
    """One line: the first error's full key path, the bad value, and what is allowed."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(schema, loc[:-1]))
        return f"unknown config key {key!r}; allowed keys here: {allowed}{more}"
    if first["type"] == "value_error":
        return f"config error: {first['ctx']['error']!s}{more}"
    message = first["msg"][0].lower() + first["msg"][1:]
    return f"config error: {key}={show_value(first.get('input'))}: {message}{more}"


def _fields_at(schema: type[BaseModel], loc: list[str]) -> list[str]:
    model = schema
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def show_value(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return (
        repr(value)
        if isinstance(value, str)
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    )
