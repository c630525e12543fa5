"""SQL over a trace's canonical tables, in DuckDB, in a sandbox that can read the trace and nothing else.

The connection is in memory, with external access off (no file or network: `read_csv`, `COPY`,
`ATTACH`, `EXPORT`, `INSTALL`, `LOAD` all fail) and its configuration locked once the views exist;
only SELECT (and EXPLAIN) statements run: anything else is refused with the statement's name.
Tables are registered as Arrow (no copy), and only those a query names (and what they need) are
built: the first query on a fresh 1e7-kernel trace does not wait for tables it does not read.
"""
from __future__ import annotations

import re

from dsocr_perf.analyze.errors import TraceError, UsageError

VIEWS = ("kernels", "launches", "cuda_api", "ranges", "marks", "kernel_ranges", "range_stats", "stages", "gpus",
         "meta", "gpu_gaps", "decode_model", "gpu_metrics", "ncu")
DEPENDS = {"kernel_ranges": ("_op_lane_inner", "_op_startend", "_range_ancestors")}
ACCOUNTING_VIEWS = ("cuda_api", "range_stats", "stages", "gpu_gaps")     # built on the wall-time accounting
ALLOWED = ("SELECT", "EXPLAIN")
MEMORY_LIMIT = "3GB"
SANDBOX_CONFIG = {"enable_external_access": False, "autoinstall_known_extensions": False,
                  "autoload_known_extensions": False, "allow_community_extensions": False}

KERNEL_RANGES = """
CREATE VIEW kernel_ranges AS
    -- every (op, enclosing range): the op's innermost push/pop range in each lane and its ancestors,
    -- and the start/end ranges that contain its launch; innermost = the op's tightest range
    SELECT l.op_id, a.ancestor_id AS range_id, a.ancestor_id = l.innermost_id AS innermost
    FROM _op_lane_inner l JOIN _range_ancestors a ON a.range_id = l.range_id
    UNION ALL
    SELECT op_id, range_id, range_id = innermost_id FROM _op_startend
"""


def statements(query: str) -> list:
    """The statements of `query`, each checked: only SELECT and EXPLAIN run."""
    import duckdb

    if not query or not query.strip():
        raise UsageError("the SQL is empty: give a query, e.g. \"SELECT count(*) FROM kernels\"")
    try:
        parsed = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise TraceError(f"SQL: {_one_line(e)}") from None
    if not parsed:
        raise UsageError("the SQL holds no statement (only comments?): give a query, e.g. "
                         "\"SELECT count(*) FROM kernels\"")
    for statement in parsed:
        kind = statement.type.name
        if kind not in ALLOWED:
            raise UsageError(f"SQL: {kind} statements are not allowed here: queries read the trace's views and "
                             "nothing else (SELECT or EXPLAIN only; no writing, attaching, copying or settings)")
    return parsed


def referenced(query: str, available) -> set[str]:
    """The canonical views a query names (a generous match: a word equal to a view's name)."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query.lower()))
    return {v for v in available if v in words}


DETAIL_COLUMNS = frozenset({"name", "short_name", "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z",
                            "registers", "shared_mem", "bytes", "category"})


def needs_kernel_details(query: str) -> bool:
    """Whether a query may read the kernel columns that cost a second pass over the export (names,
    launch geometry): it names one of them, or selects `*` (count(*) does not count). Without them
    `kernels` lacks those columns, so a wrong guess fails loudly instead of giving NULLs."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query.lower()))
    return bool(words & DETAIL_COLUMNS) or re.search(r"(^|[^(\s]\s*|[,.]\s*|select\s+)\*", query.lower()) is not None


def sandbox(tables: dict):
    """A DuckDB connection with `tables` (name -> Arrow table or a function building it) as views,
    external access off and the configuration locked."""
    import duckdb

    con = duckdb.connect(":memory:", config=SANDBOX_CONFIG)
    for name, table in tables.items():
        con.register(name, table)
    if "_op_lane_inner" in tables:
        con.execute(KERNEL_RANGES)
    return lock(con)


def lock(con):
    """Settings for queries, then no more settings (a query cannot turn external access back on)."""
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute("SET lock_configuration = true")
    return con


def run(con, query: str) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of the last statement of `query`."""
    import duckdb

    parsed = statements(query)
    try:
        result = None
        for statement in parsed:
            result = con.execute(statement)
        columns = [d[0] for d in result.description] if result is not None and result.description else []
        rows = result.fetchall() if columns else []
    except duckdb.Error as e:
        raise TraceError(f"SQL: {_one_line(e)}") from None
    return columns, rows


def _one_line(error) -> str:
    return " ".join(str(error).split())
