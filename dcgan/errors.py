"""User-facing errors: each carries the exit status and a one-line message for the CLI.

Values that came from outside (a key, a path, a file's bytes) go into messages through
``quote``, and every message is printed through ``error_line``: a newline or a terminal escape
in an input can never forge a second ``error:`` line or reach the terminal raw.
"""

import re

_PLAIN = re.compile(r"[\w.,:/@+=-]+")
# Control characters (C0, DEL, C1): printed escaped, as repr() writes them.
_CONTROL = {c: repr(chr(c))[1:-1] for c in (*range(32), *range(127, 160))}


def quote(value: object, limit: int = 120) -> str:
    """``value`` for a message: as is when it is plain text, else quoted and escaped as
    Python writes a string; at most ``limit`` characters."""
    text = str(value)
    shown = text if _PLAIN.fullmatch(text) else repr(text)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters (a huge number too)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def error_line(message: object) -> str:
    """``error: <message>`` on one line, whatever the message holds."""
    return "error: " + str(message).translate(_CONTROL)


def first_line(exc: BaseException, default: str = "", limit: int = 200) -> str:
    """The first line of an exception's message for a one-line error (its type's name, or
    ``default``, when the message is empty), at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else default or type(exc).__name__)[:limit]


class DCGANError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with ``exit_code``."""

    exit_code = 1


class ConfigError(DCGANError):
    """An unknown config key or an invalid value (usage error, status 2)."""

    exit_code = 2

    def __init__(self, key: str, rule: str):
        self.key = key
        self.rule = rule
        super().__init__(f"config: {quote(key)}: {rule}")


class RunDirError(DCGANError):
    """The run directory cannot be used as asked (existing run, nothing to resume...)."""

    exit_code = 2


class DataError(DCGANError):
    """MNIST is missing, truncated or corrupt."""


class CheckpointError(DCGANError):
    """A checkpoint is missing, unreadable or does not match the run."""


class NonFiniteLossError(DCGANError):
    """Training diverged: a loss became NaN or infinite."""
