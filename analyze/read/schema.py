"""The base tables every trace loader produces, whatever the source (nsys SQLite, PyTorch-profiler JSON).

(The nsys reader, analyze.nsys, writes the same tables straight into DuckDB for speed, with kernel
and API names as ids into a `strings` table and op_id taken from DuckDB's rowid; a reader returning
Arrow/Polars, like analyze.kineto, goes through `normalize` and analyze.load.load_base_tables.)

A loader returns ``dict[str, table]`` with the six tables below (a pyarrow.Table, a polars.DataFrame
or a dict of column lists each). ``normalize(tables)`` checks them against ``BASE_TABLES`` and returns
pyarrow Tables with exactly these columns, in this order, with these types. Everything else
(dur_ns, the launching thread of a kernel, range depth/parent/path, kernel_ranges, stages, categories)
is derived from these tables by ``analyze.attribution``, the same way for every source.

Conventions (all loaders):
- times are integer nanoseconds on the trace's own clock; ``end_ns >= start_ns``.
- ``pid``/``tid`` are OS process/thread ids. ``gpid`` is an internal process key that is unique per
  process in the trace (nsys: globalPid = globalTid & ~0xFFFFFF; Kineto: the pid). Threads are
  compared as (gpid, tid), processes by gpid, never by raw pid.
- kernels: one row per GPU operation: ``kind`` is 'kernel', 'memcpy' or 'memset'. ``gpid``/``pid`` is
  the process that launched it; ``correlation`` joins it to ``launches`` on (gpid, correlation).
  ``op_id`` is unique in the trace. ``name`` = full (demangled) name, ``short_name`` = base name
  (nsys shortName; memcpy/memset: e.g. 'Memcpy HtoD'). Columns a source lacks are NULL.
- launches: every CUDA runtime and driver API call (not only launches: syncs, mallocs too), so that
  any GPU operation finds the call that issued it. ``api_name`` has no ``_vNNNN`` suffix.
- ranges: one row per range instance. ``name`` is already qualified: 'domain:text' for a non-default
  domain, plain 'text' for the default one; ``domain`` is '' for the default domain. ``end_ns`` may be
  NULL for a range never closed (the analysis ends it at the last NVTX timestamp). ``style`` is
  'pushpop' (nested per thread) or 'startend'. ``end_tid`` is the OS tid of the ending thread when the
  source records one (nsys endGlobalTid: a start/end range ended on another thread); such ranges are
  listed but, as in NVIDIA's reports, not used for attribution. NULL otherwise.
  ``payload`` is the range's payload as text (e.g. decode step index), NULL if none.
- marks: instant NVTX events (nsys eventType 34) or instant user events; ``payload`` as text.
- gpus: one row per device seen in the trace (``device`` = kernels.device).
- meta: free key/value strings (exporter version, capture options, ...).
"""
from __future__ import annotations

import pyarrow as pa

I32, I64, STR = pa.int32(), pa.int64(), pa.string()

# table -> ordered (column, arrow type). Nullable everywhere unless listed in REQUIRED.
BASE_TABLES: dict[str, list[tuple[str, pa.DataType]]] = {
    "kernels": [
        ("op_id", I64), ("kind", STR), ("start_ns", I64), ("end_ns", I64),
        ("device", I32), ("stream", I64), ("gpid", I64), ("pid", I64), ("correlation", I64),
        ("name", STR), ("short_name", STR),
        ("grid_x", I32), ("grid_y", I32), ("grid_z", I32),
        ("block_x", I32), ("block_y", I32), ("block_z", I32),
        ("registers", I32), ("shared_mem", I64), ("bytes", I64), ("graph_node", I64),
    ],
    "launches": [
        ("correlation", I64), ("gpid", I64), ("pid", I64), ("tid", I64),
        ("start_ns", I64), ("end_ns", I64), ("api_name", STR),
    ],
    "ranges": [
        ("range_id", I64), ("name", STR), ("domain", STR), ("start_ns", I64), ("end_ns", I64),
        ("gpid", I64), ("pid", I64), ("tid", I64), ("style", STR), ("end_tid", I64), ("payload", STR),
    ],
    "marks": [
        ("ts_ns", I64), ("name", STR), ("domain", STR), ("gpid", I64), ("pid", I64), ("tid", I64),
        ("payload", STR),
    ],
    "gpus": [
        ("device", I32), ("name", STR), ("sm_count", I32), ("clock_hz", I64),
        ("memory_bandwidth_Bps", I64), ("total_memory", I64), ("compute_capability", STR),
    ],
    "meta": [("key", STR), ("value", STR)],
}

# Columns that must be present and non-NULL in every row.
REQUIRED: dict[str, tuple[str, ...]] = {
    "kernels": ("op_id", "kind", "start_ns", "end_ns", "name"),
    "launches": ("correlation", "gpid", "tid", "start_ns", "end_ns", "api_name"),
    "ranges": ("range_id", "name", "domain", "start_ns", "gpid", "tid", "style"),
    "marks": ("ts_ns", "name", "domain"),
    "gpus": ("device",),
    "meta": ("key",),
}

KINDS = ("kernel", "memcpy", "memset")
STYLES = ("pushpop", "startend")


def schema_of(table: str) -> pa.Schema:
    return pa.schema(BASE_TABLES[table])


def empty(table: str) -> pa.Table:
    return schema_of(table).empty_table()


def _to_arrow(value) -> pa.Table:
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    if isinstance(value, dict):
        return pa.table(value)
    to_arrow = getattr(value, "to_arrow", None)  # polars.DataFrame
    if to_arrow is not None:
        return to_arrow()
    raise TypeError(f"a base table must be Arrow, Polars or a dict of columns, not {type(value).__name__}")


def normalize(tables: dict, source: str = "loader") -> dict[str, pa.Table]:
    """Check a loader's output and return the six base tables with the exact columns and types.

    Missing tables become empty tables; missing nullable columns become NULL; extra columns are
    dropped; types are cast (dictionary-encoded strings are kept as strings). A missing required
    column or a NULL in one, or an unknown kind/style, is a loader bug: raises ValueError.
    """
    unknown = set(tables) - set(BASE_TABLES)
    if unknown:
        raise ValueError(f"{source}: unknown base tables {sorted(unknown)}")
    out: dict[str, pa.Table] = {}
    for name, columns in BASE_TABLES.items():
        if name not in tables or tables[name] is None:
            out[name] = empty(name)
            continue
        table = _to_arrow(tables[name])
        arrays = []
        for column, dtype in columns:
            if column in table.column_names:
                array = table.column(column)
                if pa.types.is_dictionary(array.type):
                    array = array.cast(array.type.value_type)
                if array.type != dtype:
                    array = array.cast(dtype)
            elif column in REQUIRED[name]:
                raise ValueError(f"{source}: table {name} lacks required column {column}")
            else:
                array = pa.nulls(table.num_rows, dtype)
            arrays.append(array)
        table = pa.Table.from_arrays(arrays, schema=schema_of(name))
        for column in REQUIRED[name]:
            if table.column(column).null_count:
                raise ValueError(f"{source}: table {name} has NULLs in required column {column}")
        out[name] = table
    _check_values(out["kernels"], "kind", KINDS, source)
    _check_values(out["ranges"], "style", STYLES, source)
    return out


def _check_values(table: pa.Table, column: str, allowed: tuple[str, ...], source: str) -> None:
    if table.num_rows == 0:
        return
    import pyarrow.compute as pc

    seen = set(pc.unique(table.column(column)).to_pylist())
    bad = seen - set(allowed)
    if bad:
        raise ValueError(f"{source}: {column} values {sorted(map(str, bad))} not in {allowed}")


def describe() -> str:
    """The base tables as text (for docs and error messages)."""
    lines = []
    for name, columns in BASE_TABLES.items():
        cols = ", ".join(f"{c} {t}" + ("!" if c in REQUIRED[name] else "") for c, t in columns)
        lines.append(f"{name}({cols})")
    return "\n".join(lines)
