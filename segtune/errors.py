"""The one exception type segtune raises for bad input: the CLI prints it as one line."""


class SegtuneError(Exception):
    """A user-facing problem: the message names the file (if any) and what is wrong."""
