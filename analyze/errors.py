"""Errors the analysis reports to the user: one line saying what is wrong and what to do, and an
exit status that says which kind of failure it was.

    exit 1  a target or check failed (benchmarks)           exit 2  usage: bad options or arguments
    exit 3  bad input: the trace or a file given is wrong    exit 4  cannot write an output
    exit 130 interrupted (Ctrl-C, SIGTERM)
"""

EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_INTERRUPTED = 130


class AnalyzeError(Exception):
    """Printed as `Error: <message>`, exit `status`."""
    status = EXIT_INPUT


class TraceError(AnalyzeError):
    """A trace (or another input file) cannot be opened or analysed."""


class UsageError(AnalyzeError):
    """Options or arguments that cannot work together."""
    status = EXIT_USAGE


class OutputError(AnalyzeError):
    """An output cannot be written (or would harm an input or an existing file)."""
    status = EXIT_OUTPUT
