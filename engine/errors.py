"""Errors that carry a message meant for the user (CLI prints it, GUI shows it in a dialog)."""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and what to do; no traceback."""
