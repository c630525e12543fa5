"""`--torch-ops-nvtx`: which host work fills the GPU's idle time, as PyTorch operator ranges in an nsys capture.

A second nsys capture of the same session, written to NAME.ops-nvtx.{nsys-rep,sqlite,json}, with one NVTX
range per PyTorch operator (`aten::mm`, `aten::index_fill_`, ...) in the default domain, nested inside the stage
ranges. It is a capture of its own, never the default trace, because the operator ranges change what they
measure: a push and a pop per operator (about a thousand per decode step) slow the host-bound decode loop, and
as innermost ranges they would take the kernels' exclusive time away from the stage ranges.

How the ranges are made (`--torch-ops-nvtx auto`, the default, picks the first that works here):
    nsys   `nsys profile --pytorch=autograd-nvtx`, when `nsys profile --help` lists --pytorch:
           nsys turns on torch.autograd.profiler.emit_nvtx in the Python process it starts;
    emit   the child wraps its measured pages in torch.autograd.profiler.emit_nvtx() itself (any nsys; needs a
           CUDA build of torch).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from dsocr_perf.launch.nsys import has_option

STEM = "ops-nvtx"   # the capture is NAME.ops-nvtx.*
SUFFIXES = {"report": ".nsys-rep", "sqlite": ".sqlite", "manifest": ".json"}
NSYS_OPTION = "--pytorch"


def add_arguments(ap) -> None:
    ap.add_argument("--torch-ops-nvtx", nargs="?", const="auto", choices=["auto", "nsys", "emit"], metavar="HOW",
                    help="also capture the session once more under nsys with one NVTX range per PyTorch operator, "
                         f"as NAME.{STEM}.nsys-rep/.sqlite/.json: which host work fills the GPU's idle time. A "
                         "separate capture, because the operator ranges slow the host-bound decode loop; the "
                         "default trace stays without them. HOW: auto (default: nsys --pytorch=autograd-nvtx if this "
                         "nsys has it, else emit), nsys, emit (torch.autograd.profiler.emit_nvtx in the child)")


def method(profile_help: str, choice: str) -> str:
    """'nsys' or 'emit' (see the module docstring)."""
    if choice == "auto":
        return "nsys" if has_option(profile_help, NSYS_OPTION) else "emit"
    return choice


def nsys_options(how: str) -> list[str]:
    return [f"{NSYS_OPTION}=autograd-nvtx"] if how == "nsys" else []


def operator_ranges(sqlite: Path) -> int:
    """How many NVTX ranges in the export name an aten operator (0 when the table is missing)."""
    try:
        con = sqlite3.connect(f"file:{sqlite}?mode=ro", uri=True)
        try:
            (n,) = con.execute("SELECT COUNT(*) FROM NVTX_EVENTS e LEFT JOIN StringIds s ON s.id = e.textId "
                               "WHERE COALESCE(e.text, s.value) LIKE 'aten::%'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return 0
    return n
