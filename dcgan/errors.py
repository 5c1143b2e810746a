"""User-facing errors: each carries the exit status and a one-line message for the CLI."""


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
        super().__init__(f"config: {key}: {rule}")


class RunDirError(DCGANError):
    """The run directory cannot be used as asked (existing run, nothing to resume...)."""

    exit_code = 2


class DataError(DCGANError):
    """MNIST is missing, truncated or corrupt."""


class CheckpointError(DCGANError):
    """A checkpoint is missing, unreadable or does not match the run."""


class NonFiniteLossError(DCGANError):
    """Training diverged: a loss became NaN or infinite."""
