"""Errors the analysis reports to the user: one line saying what is wrong and what to do."""


class TraceError(Exception):
    """A trace cannot be opened or analysed. The CLI prints `Error: <message>` and exits 2."""


def check_output_file(out, force: bool, other: str) -> None:
    """Refuse to overwrite `out` without --force, or to write into a missing folder; `other` names
    the option that picks another file (e.g. '--out')."""
    if out.exists() and not force:
        raise TraceError(f"{out} exists: pass --force to overwrite it, or {other} another file")
    if not out.parent.is_dir():
        raise TraceError(f"folder {out.parent} does not exist: create it or pass {other} elsewhere")
