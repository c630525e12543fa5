"""Nsight Systems SQLite export (nsys 2021.2 .. 2026.2) -> the base tables, inside DuckDB, offline.

How the SQLite file is read (measured on this 2-core machine, 1e6-row CUPTI_ACTIVITY_KIND_KERNEL,
7 columns; page cache warm):
- ADBC SQLite driver (`adbc-driver-sqlite`, the C driver behind an Arrow C stream), consumed by
  DuckDB directly from the stream: 0.65-1.0 s; importing `adbc_driver_sqlite` + `adbc_driver_manager`
  costs ~10 ms (the `.dbapi` module would pull in pyarrow and polars: 0.4 s, so it is not used).
  SQLite itself needs 0.46 s just to step through those rows (`SELECT total(...)`), so ADBC is
  close to the floor.
- Python `sqlite3` + building Arrow arrays: 6.1 s (18 columns) -- row-by-row Python; rejected.
- DuckDB's own sqlite extension is downloaded at run time by default; the pinned PyPI package
  `duckdb-extension-sqlite-scanner` stops at 1.5.5 and does not load into duckdb 2.0; rejected.
So the choice is ADBC (PyPI `adbc-driver-sqlite`, which pulls `adbc-driver-manager`): every SQLite
query is a typed `SELECT` (CASTs on nullable columns, because the driver infers a column's Arrow type
from the first batch and fails on a later mixed-type value). Big tables are collected with pyarrow's
reader (it releases the GIL, so GPU ops and API calls are read by two threads at once: 1e6 kernels +
1e6 API calls in 1.3 s wall instead of 2.5 s when DuckDB pulls the streams itself, which holds the
GIL) and inserted into DuckDB from Arrow.

Tables and columns are discovered by name (sqlite_master + PRAGMA table_info); every table but
StringIds may be absent and columns come and go across versions (../shared/docs/nsys-sqlite-schema.md).
Kernel names stay StringIds ids (table `strings`), so a 1e7-kernel trace never materialises 1e7
name strings; the canonical `kernels` view joins the text back.

Produces in the DuckDB connection (same columns as analyze.schema.BASE_TABLES, except that kernel
and API names are ids into `strings(id, value)`):
  base_ops, base_launches, base_ranges, base_marks, gpus, meta, strings
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from dsocr_perf.analyze.errors import TraceError

if TYPE_CHECKING:
    import pyarrow as pa

MEMSET_NAME_ID = -1000                 # synthetic `strings` ids for memcpy/memset names
MEMCPY_NAME_BASE = -100                # -100 - copyKind

# ENUM_CUDA_MEMCPY_OPER ids (identical in every export that has the enum); names as nsys >= 2024 prints them.
MEMCPY_KINDS = {
    0: "Unknown", 1: "Host-to-Device", 2: "Device-to-Host", 3: "Host-to-Array", 4: "Array-to-Host",
    5: "Array-to-Array", 6: "Array-to-Device", 7: "Device-to-Array", 8: "Device-to-Device",
    9: "Host-to-Host", 10: "Peer-to-Peer", 11: "Unified Host-to-Device", 12: "Unified Device-to-Host",
    13: "Unified Device-to-Device",
}


class _Sqlite:
    """A read-only ADBC connection to one export, with the table/column catalogue."""

    def __init__(self, path: Path, db=None):
        import adbc_driver_manager as adbc
        import adbc_driver_sqlite

        self._adbc = adbc
        # small reads (catalogue, counts) go through DuckDB (a new DuckDB costs ~30 ms), or through
        # pyarrow when there is no DuckDB (db=None: analyze.sweep's readers start before it is imported)
        self._scratch = db.cursor() if db is not None else None
        if self._scratch is not None:
            self._scratch.execute("SET enable_progress_bar = false")
        uri = "file:" + str(path.resolve()) + "?mode=ro&immutable=1"
        try:
            self._db = adbc_driver_sqlite.connect(uri)
            self._conn = adbc.AdbcConnection(self._db)
            names = self._small("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        except Exception as e:  # adbc raises its own DatabaseError / OperationalError types
            raise TraceError(f"{path} cannot be read as SQLite ({_reason(e)}): the file is truncated or corrupt; "
                             "copy it again or re-export it with `nsys export --type sqlite`") from None
        self.tables = {n[0] for n in names}
        self._columns: dict[str, dict[str, str]] = {}

    def table(self, name: str) -> str | None:
        """The real name of a table (also accepts a `_Vn` suffixed variant), or None."""
        if name in self.tables:
            return name
        versions = sorted((k for k in self.tables if re.fullmatch(re.escape(name) + r"_V\d+", k)),
                          key=lambda k: int(k.rsplit("_V", 1)[1]))
        return versions[-1] if versions else None

    def columns(self, table: str) -> dict[str, "Column"]:
        """lower-case column name -> Column(real name, declared type)."""
        if table not in self._columns:
            rows = self.rows(f"PRAGMA table_info('{table}')")
            self._columns[table] = {r[1].lower(): Column(r[1], (r[2] or "").upper()) for r in rows}
        return self._columns[table]

    def into(self, db, sql: str, target: str | None = None, insert: str | None = None):
        """Run `sql` on SQLite; store the Arrow stream as DuckDB table `target`, or run `insert` on it
        (reading `_sqlite_stream`), or return its rows."""
        statement = self._adbc.AdbcStatement(self._conn)
        try:
            statement.set_options(**{"adbc.sqlite.query.batch_rows": "65536"})
            statement.set_sql_query(sql)
            handle, _ = statement.execute_query()
            if target is None and insert is None:
                db.register("_sqlite_stream", handle)
                return db.execute("SELECT * FROM _sqlite_stream").fetchall()
            # Bulk reads go through pyarrow, in chunks of CHUNK_ROWS (bounded memory): its reader
            # releases the GIL (the two reader threads run in parallel) and it is faster than DuckDB
            # pulling the stream itself.
            for i, chunk in enumerate(_chunks(handle)):
                db.register("_sqlite_stream", chunk)
                if insert is not None:
                    db.execute(insert)
                elif i == 0:
                    db.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM _sqlite_stream")
                else:
                    db.execute(f"INSERT INTO {target} SELECT * FROM _sqlite_stream")
                db.unregister("_sqlite_stream")
            return None
        finally:
            db.unregister("_sqlite_stream")
            statement.close()

    def arrow(self, sql: str):
        """The whole result as a pyarrow Table (no DuckDB involved)."""
        import pyarrow as pa

        statement = self._adbc.AdbcStatement(self._conn)
        try:
            statement.set_options(**{"adbc.sqlite.query.batch_rows": "65536"})
            statement.set_sql_query(sql)
            handle, _ = statement.execute_query()
            return pa.RecordBatchReader.from_stream(handle).read_all()
        finally:
            statement.close()

    def _small(self, sql: str) -> list[tuple]:
        if self._scratch is not None:
            return self.into(self._scratch, sql)
        table = self.arrow(sql)
        return list(zip(*(column.to_pylist() for column in table.columns)))

    def rows(self, sql: str) -> list[tuple]:
        """Small result sets only (catalogue, metadata)."""
        try:
            return self._small(sql)
        except Exception as e:
            raise TraceError(f"cannot read the export ({_reason(e)}): the file is truncated or corrupt; "
                             "copy it again or re-export it with `nsys export --type sqlite`") from None

    def close(self):
        self._conn.close()
        self._db.close()


CHUNK_ROWS = 1 << 21


def _chunks(handle):
    """pyarrow Tables of about CHUNK_ROWS rows from an Arrow C stream (at least one, maybe empty)."""
    import pyarrow as pa

    reader = pa.RecordBatchReader.from_stream(handle)
    batches, rows, sent = [], 0, False
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        batches.append(batch)
        rows += batch.num_rows
        if rows >= CHUNK_ROWS:
            yield pa.Table.from_batches(batches, schema=reader.schema)
            batches, rows, sent = [], 0, True
    if batches or not sent:
        yield pa.Table.from_batches(batches, schema=reader.schema)


class Column(NamedTuple):
    name: str
    declared: str


def _reason(e: BaseException) -> str:
    """The SQLite message of an ADBC error, without the driver's prefixes."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text.rsplit("] ", 1)[-1].replace("Failed to prepare query: ", "")


# Columns declared INTEGER are read as they are (a CAST in the SQLite query costs ~45% more); the
# ADBC driver types a column from its first batch and fails on a later value of another type, which
# an INTEGER column can only hold in a damaged file: then the table is read again with CASTs.
_strict = threading.local()


class _TypeMismatch(Exception):
    pass


def _col(cols: dict[str, Column], name: str, cast: str = "INTEGER", default: str = "NULL", alias: str | None = None) -> str:
    """The column aliased to its canonical name, or the default when the table lacks it."""
    col = cols.get(name.lower())
    if col is None:
        expr = default
    elif cast == "INTEGER" and "INT" in col.declared and not getattr(_strict, "on", False):
        expr = f'"{col.name}"'
    else:
        expr = f'CAST("{col.name}" AS {cast})'
    return f"{expr} AS {alias or name}"


def _cast_on_mismatch(load, undo: str, db, *args) -> None:
    """Run `load`; if a column's type changed mid-table, undo its rows and run it again with CASTs."""
    try:
        load(db, *args)
    except _TypeMismatch:
        db.execute(undo)
        _strict.on = True
        try:
            load(db, *args)
        finally:
            _strict.on = False


def _copy(db, sq: _Sqlite, target: str | None, sql: str, insert: str | None = None) -> None:
    """Run `sql` on the SQLite file; store the result as DuckDB table `target`, or run `insert`
    (a statement reading `_sqlite_stream`)."""
    try:
        sq.into(db, sql, target, insert)
    except Exception as e:
        _raise_read_error(e)


def _raise_read_error(e: Exception):
    """_TypeMismatch (read again with CASTs), TraceError (the file's fault), or `e` itself (a bug)."""
    if isinstance(e, TraceError):
        raise e
    if "type mismatch" in str(e).lower() and not getattr(_strict, "on", False):
        raise _TypeMismatch(str(e)) from None
    if "SQLite" not in str(e) and "malformed" not in str(e):
        raise e  # not the file's fault: a bug here
    raise TraceError(f"cannot read the export ({_reason(e)}): the file is truncated or corrupt; "
                     "copy it again or re-export it with `nsys export --type sqlite`") from None


def read_arrow(sq: _Sqlite, query) -> "pa.Table":
    """The result of the SQLite query `query()` as a pyarrow Table; when a column's type changes
    mid-table the query is built again with CASTs (see _col)."""
    def read():
        try:
            return sq.arrow(query())
        except Exception as e:
            _raise_read_error(e)

    try:
        return read()
    except _TypeMismatch:
        _strict.on = True
        try:
            return read()
        finally:
            _strict.on = False


def load_nsys(db, path: Path, warnings: list[str], lean: bool = False, meanwhile=None) -> None:
    """Fill the DuckDB connection `db` with the base tables of the nsys export at `path`.
    `lean`: skip the kernel columns that only the `kernels` view shows (names, geometry, bytes).
    `meanwhile(db)`: work on base_ranges/base_marks to run while the GPU ops are still being read."""
    sq = _Sqlite(path, db)
    try:
        _load(db, sq, path, warnings, lean, meanwhile)
    finally:
        sq.close()


def _load(db, sq: _Sqlite, path: Path, warnings: list[str], lean: bool, meanwhile) -> None:
    strings = sq.table("StringIds")
    known = [t for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS",
                         "TARGET_INFO_GPU", "META_DATA_EXPORT", "EXPORT_META_DATA") if sq.table(t)]
    if strings is None or not known:
        raise TraceError(f"{path} is an SQLite database but not an Nsight Systems export (no StringIds / "
                         "CUPTI / NVTX tables); export a report with `nsys export --type sqlite REPORT.nsys-rep`")

    _copy(db, sq, "strings", f'SELECT CAST(id AS INTEGER) AS id, CAST(value AS TEXT) AS value FROM "{strings}"')
    extra = [(MEMCPY_NAME_BASE - k, f"[CUDA memcpy {v}]") for k, v in MEMCPY_KINDS.items()]
    extra.append((MEMSET_NAME_ID, "[CUDA memset]"))
    db.executemany("INSERT INTO strings VALUES (?, ?)", extra)

    # The two big tables are read side by side: GPU ops in a second thread (its own SQLite and DuckDB
    # connections; both libraries release the GIL), API calls, NVTX and the rest here.
    failure: list[BaseException] = []

    def read_ops():
        try:
            ops_sq = _Sqlite(path, db)
            try:
                cursor = db.cursor()
                cursor.execute("SET enable_progress_bar = false")
                _cast_on_mismatch(_load_ops, "DELETE FROM base_ops", cursor, ops_sq, lean)
            finally:
                ops_sq.close()
        except BaseException as e:  # re-raised below, in the caller's thread
            failure.append(e)

    reader = threading.Thread(target=read_ops, name="dsocr-read-ops")
    reader.start()
    try:
        _cast_on_mismatch(_load_launches, "DELETE FROM base_launches", db, sq)
        _load_nvtx(db, sq)
        _load_gpus(db, sq)
        if meanwhile is not None:
            meanwhile(db)
    finally:
        reader.join()
    if failure:
        raise failure[0]
    _load_meta(db, sq, warnings)


# Columns of base_ops, and how each GPU-op table fills them (None: NULL). `lean` loads skip the
# columns only the canonical `kernels` view shows (names, launch geometry, bytes).
OPS_COLUMNS = ("kind", "start_ns", "end_ns", "device", "stream", "gpid", "pid", "correlation",
               "name_id", "short_name_id", "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z",
               "registers", "shared_mem", "bytes", "graph_node")
LEAN_OPS_COLUMNS = ("kind", "start_ns", "end_ns", "device", "stream", "gpid", "pid", "correlation",
                    "graph_node")
OPS_TYPES = {"kind": "UTINYINT", "device": "INTEGER", "grid_x": "INTEGER", "grid_y": "INTEGER", "grid_z": "INTEGER",
             "block_x": "INTEGER", "block_y": "INTEGER", "block_z": "INTEGER", "registers": "INTEGER"}


def _load_ops(db, sq: _Sqlite, lean: bool) -> None:
    """base_ops: KERNEL + MEMCPY + MEMSET, one row per GPU operation (op_id: DuckDB's rowid, see
    attribution._ops)."""
    columns = LEAN_OPS_COLUMNS if lean else OPS_COLUMNS
    typed = ", ".join(f"{c} {OPS_TYPES.get(c, 'BIGINT')}" for c in columns)
    db.execute(f"CREATE OR REPLACE TABLE base_ops ({typed})")
    for kind, table in enumerate(("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET")):
        real = sq.table(table)
        if real is None:
            continue
        c = sq.columns(real)
        source = {"start_ns": _col(c, "start", alias="start_ns"), "end_ns": _col(c, "end", alias="end_ns"),
                  "device": _col(c, "deviceId", alias="device"), "stream": _col(c, "streamId", alias="stream"),
                  "correlation": _col(c, "correlationId", alias="correlation"),
                  "gpid": _col(c, "globalPid", alias="gpid"), "graph_node": _col(c, "graphNodeId", alias="graph_node")}
        if not lean and kind == 0:
            shared = (f'CAST(coalesce("{c["staticsharedmemory"].name}", 0) + coalesce("{c["dynamicsharedmemory"].name}", 0) '
                      'AS INTEGER) AS shared_mem' if "staticsharedmemory" in c and "dynamicsharedmemory" in c else "NULL AS shared_mem")
            source.update(name_id=_col(c, "demangledName", alias="name_id"),
                          short_name_id=_col(c, "shortName", alias="short_name_id"),
                          grid_x=_col(c, "gridX", alias="grid_x"), grid_y=_col(c, "gridY", alias="grid_y"),
                          grid_z=_col(c, "gridZ", alias="grid_z"), block_x=_col(c, "blockX", alias="block_x"),
                          block_y=_col(c, "blockY", alias="block_y"), block_z=_col(c, "blockZ", alias="block_z"),
                          registers=_col(c, "registersPerThread", alias="registers"), shared_mem=shared)
        elif not lean and kind == 1:
            copy_kind = (f'{MEMCPY_NAME_BASE} - CAST(coalesce("{c["copykind"].name}", 0) AS INTEGER)'
                         if "copykind" in c else str(MEMCPY_NAME_BASE))
            source.update(name_id=f"{copy_kind} AS name_id", bytes=_col(c, "bytes", alias="bytes"))
        elif not lean:
            source.update(name_id=f"{MEMSET_NAME_ID} AS name_id", bytes=_col(c, "bytes", alias="bytes"))
        sql = f'SELECT {", ".join(source.values())} FROM "{real}"'
        select = []
        for column in columns:
            if column == "kind":
                select.append(str(kind))
            elif column == "pid":
                select.append("(gpid >> 24) & 16777215")
            elif column == "short_name_id" and "short_name_id" not in source:
                select.append("name_id")
            elif column in source:
                select.append(column)
            else:
                select.append("NULL")
        _copy(db, sq, None, sql, f"INSERT INTO base_ops SELECT {', '.join(select)} FROM _sqlite_stream")


def _load_launches(db, sq: _Sqlite) -> None:
    """base_launches: every CUDA runtime and driver API call (CUPTI_ACTIVITY_KIND_RUNTIME)."""
    db.execute("""CREATE OR REPLACE TABLE base_launches (correlation BIGINT, gpid BIGINT, pid BIGINT, tid BIGINT,
                  start_ns BIGINT, end_ns BIGINT, api_id BIGINT)""")
    runtime = sq.table("CUPTI_ACTIVITY_KIND_RUNTIME")
    if runtime:
        c = sq.columns(runtime)
        _copy(db, sq, None, f"""SELECT {_col(c, 'correlationId')}, {_col(c, 'globalTid')},
              {_col(c, 'start')}, {_col(c, 'end')}, {_col(c, 'nameId')} FROM "{runtime}" """,
              """INSERT INTO base_launches
                 SELECT correlationId, globalTid & ~16777215, (globalTid >> 24) & 16777215, globalTid & 16777215,
                        start, "end", nameId FROM _sqlite_stream""")


def _load_nvtx(db, sq: _Sqlite) -> None:
    """base_ranges and base_marks (analyze.nvtx)."""
    from dsocr_perf.analyze.nvtx import read_nvtx

    store_nvtx(db, read_nvtx(sq))


def store_nvtx(db, nvtx, copy: bool = True) -> None:
    """base_ranges and base_marks as DuckDB tables, or (copy=False) as views of the Arrow tables."""
    for name, table in (("base_ranges", nvtx.ranges), ("base_marks", nvtx.marks)):
        if copy:
            db.from_arrow(table).create(name)
        else:
            db.register(name, table)


GPU_COLUMNS = (("device", "id", "INTEGER"), ("name", "name", "TEXT"), ("sm_count", "smCount", "INTEGER"),
               ("clock_hz", "clockRate", "INTEGER"), ("memory_bandwidth_Bps", "memoryBandwidth", "INTEGER"),
               ("total_memory", "totalMemory", "INTEGER"))


def read_gpus(sq: _Sqlite) -> "pa.Table":
    """One row per device of TARGET_INFO_GPU (the table repeats a device per context)."""
    import pyarrow as pa

    from dsocr_perf.analyze.schema import BASE_TABLES

    schema = pa.schema(BASE_TABLES["gpus"])
    gpu = sq.table("TARGET_INFO_GPU")
    if gpu is None:
        return schema.empty_table()
    c = sq.columns(gpu)
    cc = (f'CAST("{c["computemajor"].name}" AS TEXT) || \'.\' || CAST("{c["computeminor"].name}" AS TEXT)'
          if "computemajor" in c and "computeminor" in c else "NULL")
    select = ", ".join(f'CAST("{c[source.lower()].name}" AS {cast})' if source.lower() in c else "NULL"
                       for _, source, cast in GPU_COLUMNS)
    rows = sq.rows(f'SELECT DISTINCT {select}, {cc} FROM "{gpu}"')
    rows.sort(key=lambda r: (r[0] is None, r[0] or 0, str(r)))
    return pa.Table.from_pylist([dict(zip(schema.names, r)) for r in rows], schema)


def _load_gpus(db, sq: _Sqlite) -> None:
    store_gpus(db, read_gpus(sq))


def store_gpus(db, gpus) -> None:
    db.from_arrow(gpus).create("gpus")


def read_meta(sq: _Sqlite, warnings: list[str]) -> list[tuple[str, str]]:
    """(key, value) rows of the export's metadata tables (environment variables left out), plus
    ('source', 'nsys'); a warning when CUDA graphs were traced at graph level."""
    meta = []
    for table in ("META_DATA_EXPORT", "EXPORT_META_DATA", "META_DATA_CAPTURE"):
        real = sq.table(table)
        if real and {"name", "value"} <= set(sq.columns(real)):
            meta += [(k, v) for k, v in sq.rows(f'SELECT CAST(name AS TEXT), CAST(value AS TEXT) FROM "{real}"')
                     if k is None or "ENVIRONMENT_VARIABLE" not in k]
    meta.append(("source", "nsys"))

    # CUDA graphs traced at graph level: one GRAPH_TRACE row per launch, no per-kernel rows.
    graph_rows = 0
    graph_trace = sq.table("CUPTI_ACTIVITY_KIND_GRAPH_TRACE")
    if graph_trace:
        graph_rows = sq.rows(f'SELECT count(*) FROM "{graph_trace}"')[0][0]
    graph_mode = next((v for k, v in meta if k is not None and k.endswith("CUDA_GRAPH_TRACE_OPTIONS:MODE")), None)
    graph_launches = _graph_launches(sq) if graph_mode == "Graph" else 0
    if graph_rows or (graph_mode == "Graph" and graph_launches):
        n = graph_rows or graph_launches
        warnings.append(f"CUDA graphs were traced at graph level ({n} graph launches): per-kernel rows of graph "
                        "launches are absent from this export and their GPU time is not attributed; "
                        "capture with `nsys profile --cuda-graph-trace=node`")
        meta.append(("cuda_graph_trace", "graph"))
    return meta


def _graph_launches(sq: _Sqlite) -> int:
    runtime, strings = sq.table("CUPTI_ACTIVITY_KIND_RUNTIME"), sq.table("StringIds")
    if runtime is None or strings is None or "nameid" not in sq.columns(runtime):
        return 0
    return sq.rows(f"""SELECT count(*) FROM "{runtime}" WHERE "{sq.columns(runtime)['nameid'].name}" IN (
                       SELECT id FROM "{strings}" WHERE value GLOB 'cudaGraphLaunch*' OR value GLOB 'cuGraphLaunch*')""")[0][0]


def _load_meta(db, sq: _Sqlite, warnings: list[str]) -> None:
    store_meta(db, read_meta(sq, warnings))


def store_meta(db, meta: list[tuple[str, str]]) -> None:
    db.execute("CREATE OR REPLACE TABLE meta (key VARCHAR, value VARCHAR)")
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta)
