"""Errors caused by the user's input (config, files, checkpoints).

The entry points print these as one message and exit non-zero, without a traceback.
"""


class UserInputError(RuntimeError):
    """Bad config value, missing or malformed file: something the user can fix."""
