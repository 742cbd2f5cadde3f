"""Errors that mean "the user can fix this": the CLI prints them as one line, without a traceback."""


class UserError(RuntimeError):
    """Bad input the user can fix; the message names the fix."""
