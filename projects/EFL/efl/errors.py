"""Errors about the user's input (config, data, files, a diverging run). Their message
says what is wrong and how to fix it; ``train_net.py`` prints it as one paragraph, without
a stack trace, and exits with status 2."""

__all__ = [
    "InputError",
    "ConfigError",
    "DatasetFormatError",
    "ImageUnreadable",
    "CheckpointError",
    "TrainingDiverged",
    "report_input_error",
]


class InputError(Exception):
    """Bad input from the user; the message names the file/field/value and the fix."""


class ConfigError(InputError, ValueError):
    """A config key that does not exist, or a config value out of range."""


class DatasetFormatError(InputError, ValueError):
    """An annotation file that is not valid JSON, not LVIS-shaped, or inconsistent."""


class ImageUnreadable(InputError, OSError):
    """A training image that cannot be read (missing, truncated, not an image)."""


class CheckpointError(InputError, OSError):
    """A checkpoint that cannot be read, or does not fit the model on ``--resume``."""


class TrainingDiverged(InputError, FloatingPointError):
    """The loss became NaN or infinite; nothing after the last good checkpoint is saved."""


def report_input_error(error: Exception) -> int:
    """The command-line tools' form of bad input: ``ERROR: <the message as one paragraph>``
    on stderr. Returns 2, their exit status for it."""
    import sys

    print(f"ERROR: {' '.join(str(error).split())}", file=sys.stderr)
    return 2
