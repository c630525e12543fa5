"""Errors the analysis reports to the user: one line saying what is wrong and what to do."""


class TraceError(Exception):
    """A trace cannot be opened or analysed. The CLI prints `Error: <message>` and exits 2."""
