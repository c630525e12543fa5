"""Text formatting shared by every output: aligned plain-text tables for the terminal, number
formats, and the pieces the Markdown and HTML reports share (no dependencies)."""
from __future__ import annotations

import math


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
    if isinstance(value, float) and value != value:
        return ""
    return middle(str(value), max_width)


def middle(text: str, width: int) -> str:
    """Cut from the middle, so both ends stay: kernel names differ at the end (their functor) as
    often as at the start."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def ms(ns) -> str:
    """Nanoseconds as milliseconds with 3 decimals ('' for None)."""
    return "" if ns is None else f"{ns / 1e6:,.3f}"


def pct(part, whole) -> str:
    if part is None or not whole:
        return ""
    return f"{100.0 * part / whole:.1f}%"


def num(value, fmt: str, scale: float = 1.0) -> str:
    """A number formatted, '-' where it does not exist."""
    return "-" if value is None else format(value / scale, fmt)


# ---------------------------------------------------------------- shared by the reports (md and html)

def _fmt_ms(ns, digits=3) -> str:
    return "-" if ns is None else f"{ns / 1e6:,.{digits}f}"


def _fmt_pct(x, digits=1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _fmt_num(x, fmt="{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _short(name: str, limit: int = 70) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def fit_sentence(dec: dict) -> str:
    """The least-squares line of mean GPU time per step, read at the first and last step."""
    fit, by = dec["fit"], dec["by_step"]
    x = fit["x"]
    first, last = by[0][x], by[-1][x]
    at = lambda v: (fit["intercept_ns"] + fit["slope_ns"] * v) / 1e3
    unit = "token of context" if x == "kv_length" else "step"
    where = "KV length" if x == "kv_length" else "step"
    return (f"Least-squares fit of the mean GPU time per step: {fit['slope_ns']:+,.2f} ns per {unit}, "
            f"{at(first):,.1f} µs at {where} {first:,} to {at(last):,.1f} µs at {where} {last:,} "
            f"(r² = {_fmt_num(fit.get('r2'), '{:.3f}')}).")


def stage_table(data: dict, name_cell=lambda name: name, text_cell=lambda text: text) -> tuple[list, list]:
    """Header and cell rows of the stage table, shared by report.md and report.html (which passes
    its own escaping for the name and text cells)."""
    has_metrics = any(r.get("flops") is not None for r in data["stages"])
    header = ["stage", "n", "inclusive ms", "share", "exclusive ms", "busy ms", "CPU ms", "GPU idle", "kernels", "launches"]
    if has_metrics:
        header += ["GFLOP", "TFLOP/s", "MFU", "GB/s", "MBU", "bound"]
    rows = []
    for r in data["stages"]:
        row = [name_cell(r["name"]), r["instances"], _fmt_ms(r["inclusive_ns"]), _fmt_pct(r["share"]),
               _fmt_ms(r["exclusive_ns"]), _fmt_ms(r["busy_ns"]), _fmt_ms(r["cpu_ns"]),
               _fmt_pct(r["gpu_idle_share"], 0), f"{r['kernels']:,}", f"{r['launches']:,}"]
        if has_metrics:
            row += [_fmt_num(None if r["flops"] is None else r["flops"] / 1e9), _fmt_num(r["tflops"]),
                    _fmt_num(r["mfu"], "{:.1f}%"), _fmt_num(r["gbs"], "{:,.0f}"), _fmt_num(r["mbu"], "{:.1f}%"),
                    text_cell(r.get("bound") or "-")]
        rows.append(row)
    return header, rows


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


