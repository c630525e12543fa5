"""SQL over a trace's canonical tables, in DuckDB, in a sandbox that can read the trace and nothing else.

The connection is in memory, with external access off (no file or network: `read_csv`, `COPY`,
`ATTACH`, `EXPORT`, `INSTALL`, `LOAD` all fail) and its configuration locked once the views exist;
only SELECT statements (and EXPLAIN of one) run: anything else is refused with the statement's name.
Tables are registered as Arrow (no copy), and only those a query names (and what they need) are
built: the first query on a fresh 1e7-kernel trace does not wait for tables it does not read.
"""
from __future__ import annotations

import re

from dsocr_perf.analyze.errors import TraceError, UsageError

VIEWS = ("kernels", "launches", "cuda_api", "ranges", "marks", "kernel_ranges", "range_stats", "stages", "gpus",
         "meta", "gpu_gaps", "decode_model", "gpu_metrics", "ncu")
DEPENDS = {"kernel_ranges": ("_op_lane_inner", "_op_startend", "_range_ancestors")}
MAX_SQL_BYTES = 64 << 10    # the longest ready-made query is 2 kB; DuckDB's planner grows quadratically on a huge one
ACCOUNTING_VIEWS = ("cuda_api", "range_stats", "stages", "gpu_gaps")     # built on the wall-time accounting
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
    try:   # an argument decoded under LC_ALL=C keeps its non-ASCII bytes as surrogates: the UTF-8 they were
        query = query.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        raise UsageError("the SQL is not UTF-8 text: give the query in UTF-8 (or only ASCII)") from None
    if len(query.encode("utf-8")) > MAX_SQL_BYTES:
        raise UsageError(f"the SQL is longer than {MAX_SQL_BYTES >> 10} kB: give a shorter query (a query reads the "
                         "trace's views; it does not need to carry data)")
    try:
        parsed = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise TraceError(f"SQL: {_one_line(e)}; {FIX}") from None
    if not parsed:
        raise UsageError("the SQL holds no statement (only comments?): give a query, e.g. "
                         "\"SELECT count(*) FROM kernels\"")
    for statement in parsed:
        _check_kind(statement)
    return parsed


# EXPLAIN [ANALYZE] [(options)] after any comments: ANALYZE runs the statement it explains.
EXPLAIN_PREFIX = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*explain\b\s*(?:analy[sz]e\b\s*)?"
                            r"(?:\([^()]*\)\s*)?", re.I | re.S)


def _check_kind(statement, depth: int = 0) -> None:
    """SELECT, or EXPLAIN of a statement that passes this check itself."""
    import duckdb

    kind = statement.type.name
    if kind == "EXPLAIN" and depth < 4:
        prefix = EXPLAIN_PREFIX.match(statement.query)
        try:
            inner = duckdb.extract_statements(statement.query[prefix.end():]) if prefix else []
        except duckdb.Error:
            inner = []
        if len(inner) == 1:
            return _check_kind(inner[0], depth + 1)
        kind = "this EXPLAIN"
    if kind != "SELECT":
        raise UsageError(f"SQL: {kind} statements are not allowed here: queries read the trace's views and "
                         "nothing else; give a SELECT (or EXPLAIN SELECT): no writing, attaching, copying or settings")


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
    """Settings for queries, then no more settings (a query cannot turn external access back on).
    A second connection to a database already locked (DuckDB shares one instance per file within a
    process: `diff A A`, two opens of one cached trace) finds it locked, with those settings."""
    if con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
        return con
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute("SET lock_configuration = true")
    return con


FIX = "fix the query (the views and their columns: `dsocr-analyze sql --help` and the README)"


def run(con, query: str) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of the last statement of `query`. The query runs in a worker thread, so
    that Ctrl-C stops it at once (DuckDB is interrupted) instead of when it finishes."""
    import threading

    import duckdb

    parsed = statements(query)
    outcome: dict = {}
    done = threading.Event()

    def work():
        try:
            result = None
            for statement in parsed:
                result = con.execute(statement)
            columns = [d[0] for d in result.description] if result is not None and result.description else []
            outcome["value"] = (columns, result.fetchall() if columns else [])
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, daemon=True, name="dsocr-sql").start()
    try:
        while not done.wait(0.1):
            pass
    except BaseException:
        con.interrupt()
        done.wait()
        raise
    if "error" in outcome:
        if isinstance(outcome["error"], duckdb.Error):
            raise TraceError(f"SQL: {_one_line(outcome['error'])}; {FIX}") from None
        raise outcome["error"]
    return outcome["value"]


def _one_line(error) -> str:
    return " ".join(str(error).split())
