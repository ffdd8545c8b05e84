"""Errors that are the user's to fix: the CLI prints them as one clear message and exits 2."""


class DomaintuneError(Exception):
    """A mistake in the user's input (recipe, data file, run directory), with a message that names it."""

    exit_code = 2
