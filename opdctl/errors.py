"""User-facing errors: one line naming the problem and the fix."""


def reason(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type if it has none), at most ``limit`` characters: a longer
    one ends at a word, with "...".

    A file-system error names its file: ``path: No such file or directory``.
    """
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:(") + "..."


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
