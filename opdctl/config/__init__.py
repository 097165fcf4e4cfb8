"""The run configuration: the schema (keys, defaults, checks), YAML files with dotted overrides, and the
generated reference (docs/config.md). Layer 1: imports only the base modules.
"""
