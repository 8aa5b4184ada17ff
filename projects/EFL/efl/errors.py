"""Errors about the user's input (config, data, files). Their message says what is wrong
and how to fix it; ``train_net.py`` prints it as one paragraph, without a stack trace."""

__all__ = ["InputError"]


class InputError(Exception):
    """Bad input from the user; the message names the file/field/value and the fix."""
