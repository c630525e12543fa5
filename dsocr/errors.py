"""The session's user-facing error: the message is one line saying what is wrong and what to do.

The CLI prints `Error: <message>` and exits 2; no traceback.
"""


class DsocrError(Exception):
    pass
