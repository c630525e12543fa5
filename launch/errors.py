"""The launcher's one exception: the CLI prints `Error: <message>` and exits 2, never a traceback."""


class LaunchError(Exception):
    """Something the user can fix: say what is wrong and what to do, in one line."""
