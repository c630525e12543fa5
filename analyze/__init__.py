"""The analysis of dsocr-perf as a library: open a trace, get its canonical tables.

    from dsocr_perf.analyze import open_trace, document

    trace = open_trace("traces/run.sqlite")       # nsys SQLite/Parquet export or PyTorch-profiler JSON
    trace.table("stages")                          # a canonical table as pyarrow.Table
    trace.polars("kernels")                        # ... as polars.DataFrame
    trace.con.execute("SELECT ...").fetchall()     # SQL over every view (the read-only sandbox)
    document(trace)                                # what `dsocr-analyze TRACE --json` prints

Layout (data flows down the list; nothing imports the CLI):
    read/      readers: nsys SQLite (ADBC) and Parquet exports, NVTX, Kineto JSON, the manifest -> Raw
    trace.py   open_trace -> Trace: format, version, manifest, GPU, warnings, resolved once
    attribute.py   the one attribution engine (NumPy): ops -> calls -> ranges, per-range totals
    accounting.py  wall time = busy + idle, idle split by cause; API call counts;  gaps.py: gpu_gaps
    tables.py  the canonical tables (Arrow), built on first use;  cache.py: derived, checked cache
    sql.py     the DuckDB sandbox over the tables
    metrics/   FLOPs and bytes of the workload (flops), limiter (efficiency), opportunities, peaks,
               kernel categories
    out/       outputs: the JSON document, stage table, report, dataset, diff, Perfetto, write-back,
               Parquet; each registers its commands
    cli.py     `dsocr-analyze`: the one boundary where failures become one `Error:` line
"""
from __future__ import annotations

from dsocr_perf.analyze.trace import Trace, open_trace

__all__ = ["Trace", "open_trace", "document"]


def __getattr__(name: str):
    if name == "document":   # imported on use: the document needs NumPy, opening a cached trace does not
        from dsocr_perf.analyze.out.document import document

        return document
    raise AttributeError(name)
