"""Aligned plain-text tables for the terminal (no dependencies, nothing imported at start-up)."""
from __future__ import annotations


def render(headers: list[str], rows: list[list], align: str | None = None, max_width: int = 60) -> str:
    """Columns separated by two spaces; `align` has one 'l' or 'r' per column (default: text left,
    numbers right). Cells longer than `max_width` are cut with '…'."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    if align is None:
        align = "".join("r" if rows and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) else "l"
                        for i in range(len(headers)))
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        parts = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _cell(value, max_width: int) -> str:
    if value is None:
        return ""
    text = str(value)
    if len(text) > max_width:
        text = text[: max_width - 1] + "…"
    return text


def ms(ns) -> str:
    """Nanoseconds as milliseconds with 3 decimals ('' for None)."""
    return "" if ns is None else f"{ns / 1e6:,.3f}"


def pct(part, whole) -> str:
    if part is None or not whole:
        return ""
    return f"{100.0 * part / whole:.1f}%"
