"""User-facing errors: one line naming the problem and the fix."""


class OpdctlError(Exception):
    """An error caused by the user's input or environment, shown without a traceback."""


class ConfigError(OpdctlError):
    """A configuration key, value or file is wrong."""


class BackendError(OpdctlError):
    """A teacher or student backend cannot be found, loaded or reached."""


class DataError(OpdctlError):
    """A dataset is missing, empty or malformed."""


class RunError(OpdctlError):
    """A run directory is missing, incomplete, or a run cannot continue."""
