"""Read-only, columnar access to one SQLite file through the ADBC SQLite driver (offline, no DuckDB).

Why ADBC: it hands SQLite rows to Arrow in C (measured at 1e6 kernels, 5 integer columns: 0.37 s,
against ~6 s for Python's sqlite3 building Arrow row by row; DuckDB's own sqlite extension would be
downloaded at run time). Its readers release the GIL, so two threads read two tables at once.

The file is opened as an SQLite URI with `mode=ro&immutable=1` (nothing is ever written, no journal
or lock file appears beside it), the path percent-encoded byte by byte, so that any byte a filename
may hold (`#`, `?`, `%`, spaces, non-UTF-8) names the file itself.

The driver types a column from its first batch and fails on a later value of another type, which an
INTEGER column only holds in a damaged file: `ints` then reads the table again with CASTs.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote_from_bytes

import numpy as np
import pyarrow as pa

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.analyze.read.raw import int_column

BATCH_ROWS = "65536"
REEXPORT = "copy it again or re-export it with `nsys export --type sqlite`"


def sqlite_uri(path: Path) -> str:
    return "file:" + quote_from_bytes(os.fsencode(os.path.abspath(path)), safe="/") + "?mode=ro&immutable=1"


def reason(error: BaseException) -> str:
    """The SQLite message of an ADBC error, without the driver's prefixes."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text.rsplit("] ", 1)[-1].replace("Failed to prepare query: ", "")


class SqliteFile:
    """One read-only connection (use one per thread) with the table and column catalogue."""

    def __init__(self, path: Path, name: str | None = None):
        import adbc_driver_manager
        import adbc_driver_sqlite

        self.path, self.name = Path(path), name or str(path)
        self._adbc = adbc_driver_manager
        try:
            self._db = adbc_driver_sqlite.connect(sqlite_uri(self.path))
            self._conn = adbc_driver_manager.AdbcConnection(self._db)
            names = self.rows("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        except TraceError:
            raise
        except Exception as e:  # the driver raises its own error types
            raise TraceError(f"{self.name} cannot be read as SQLite ({reason(e)}): the file is truncated or "
                             f"corrupt; {REEXPORT}") from None
        self.tables = {n for (n,) in names if isinstance(n, str)}
        self._columns: dict[str, dict[str, str]] = {}

    def close(self) -> None:
        self._conn.close()
        self._db.close()

    # -- catalogue
    def table(self, name: str) -> str | None:
        """The real name of a table; a `_Vn` suffixed variant (highest n) counts as the table."""
        if name in self.tables:
            return name
        versions = [t for t in self.tables if t.startswith(name + "_V") and t[len(name) + 2:].isdigit()]
        return max(versions, key=lambda t: int(t[len(name) + 2:])) if versions else None

    def columns(self, table: str) -> dict[str, str]:
        """lower-case column name -> its real name in `table`."""
        if table not in self._columns:
            rows = self.rows(f"SELECT name FROM pragma_table_info('{_quote_literal(table)}')")
            self._columns[table] = {str(n).lower(): str(n) for (n,) in rows}
        return self._columns[table]

    def select(self, table: str, columns: list[str], where_in: tuple[str, tuple[int, ...]] | None = None) -> pa.Table:
        """Columns of a table (names as `columns` returns them) as Arrow; `where_in` = (column,
        integer values) keeps the rows whose column holds one of the values. Other sources may
        return more rows (analyze.read.parquet): callers that pass `where_in` filter again."""
        where = f" WHERE {_quote(where_in[0])} IN ({', '.join(str(int(v)) for v in where_in[1])})" if where_in else ""
        sql = f'SELECT {", ".join(_quote(c) for c in columns)} FROM {_quote(table)}{where}'
        try:
            return self.arrow(sql)
        except ReadError as e:
            raise TraceError(f"{self.name}: cannot read {table} ({reason(e.cause)}): the file is truncated or "
                             f"corrupt; {REEXPORT}") from None

    # -- reading
    def batches(self, sql: str):
        statement = self._adbc.AdbcStatement(self._conn)
        try:
            statement.set_options(**{"adbc.sqlite.query.batch_rows": BATCH_ROWS})
            statement.set_sql_query(sql)
            handle, _ = statement.execute_query()
            yield from pa.RecordBatchReader.from_stream(handle)
        except Exception as e:
            raise ReadError(e) from None
        finally:
            statement.close()

    def arrow(self, sql: str) -> pa.Table:
        batches = list(self.batches(sql))
        if not batches:
            return _empty_result(self, sql)
        return pa.Table.from_batches(batches)

    def rows(self, sql: str) -> list[tuple]:
        """Small result sets only (catalogue, metadata)."""
        try:
            table = self.arrow(sql)
        except ReadError as e:
            raise TraceError(f"{self.name}: cannot read the export ({reason(e.cause)}): the file is truncated or "
                             f"corrupt; {REEXPORT}") from None
        return list(zip(*(c.to_pylist() for c in table.columns)))

    def ints(self, table: str, columns: dict[str, str], rows_hint: int | None = None) -> dict[str, np.ndarray]:
        """Integer columns of `table` as int64 NumPy arrays, filled batch by batch into arrays sized
        once (no second copy of a big table in memory). `columns`: output name -> real column name,
        or a pair of names (a, b) read as one packed column (a << 40 | b): one column less to move.
        NULLs become INT_NULL."""
        size = rows_hint if rows_hint is not None else self.row_bound(table)
        out = {name: np.empty(size, np.int64) for name in columns}
        rows = self.read_into(table, columns, out, 0)
        return {name: a[:rows] for name, a in out.items()}

    def read_into(self, table: str, columns: dict, out: dict[str, np.ndarray], offset: int) -> int:
        """As `ints`, into out[name][offset:]; when they are too short every array of `out` is grown
        (the grown arrays replace those in `out`). Returns the number of rows read."""
        try:
            return self._read_into(table, columns, out, offset, cast=False)
        except ReadError as e:
            if "type mismatch" not in str(e.cause).lower():
                raise TraceError(f"{self.name}: cannot read {table} ({reason(e.cause)}): the file is truncated or "
                                 f"corrupt; {REEXPORT}") from None
        try:
            return self._read_into(table, columns, out, offset, cast=True)
        except ReadError as e:
            raise TraceError(f"{self.name}: cannot read {table} ({reason(e.cause)}): the file is truncated or "
                             f"corrupt; {REEXPORT}") from None

    def _read_into(self, table, columns, out, offset, cast: bool) -> int:
        def expr(c):
            if isinstance(c, tuple):
                a, b = (_integer(x) if cast else _quote(x) for x in c)
                return f"(({a} << {PACK_BITS}) | ({b} & {(1 << PACK_BITS) - 1}))"
            return _integer(c) if cast else _quote(c)

        sql = f'SELECT {", ".join(expr(c) for c in columns.values())} FROM {_quote(table)}'
        names = list(columns)
        filled = offset
        for batch in self.batches(sql):
            n = batch.num_rows
            if filled + n > out[names[0]].size:  # the bound was low: grow
                size = max(2 * out[names[0]].size, filled + n)
                for name in out:
                    out[name] = np.resize(out[name], size)
            for name, column in zip(names, batch.columns):
                out[name][filled:filled + n] = to_int64(column)
            filled += n
        return filled - offset

    def row_bound(self, table: str) -> int:
        """max(rowid): the row count of an export's table (rows 1..n), read in O(log n); capped by
        what the file could hold (a damaged rowid must not size an array), grown when exceeded."""
        try:
            rows = self.rows(f"SELECT max(rowid) FROM {_quote(table)}")
            bound = int(rows[0][0] or 0) if rows else 0
        except (TraceError, TypeError, ValueError):  # a view, or a rowid that is not a number
            bound = 0
        return max(0, min(bound, os.path.getsize(self.path) // 8 + 1))


INT_NULL = np.iinfo(np.int64).min
PACK_BITS = 40


def to_int64(column: pa.Array) -> np.ndarray:
    """An Arrow integer (or null-typed) array as int64 NumPy, NULL -> INT_NULL; a value that is not an
    integer (text or a fractional REAL in a damaged export) counts as NULL (analyze.read.raw.int_column)."""
    if pa.types.is_null(column.type):
        return np.full(len(column), INT_NULL, np.int64)
    if column.type != pa.int64():
        column = int_column(column)
    if column.null_count:
        column = column.fill_null(INT_NULL)
    return column.to_numpy(zero_copy_only=False)


class ReadError(Exception):
    """An error of the driver while reading; `cause` is the original."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _empty_result(db: SqliteFile, sql: str) -> pa.Table:
    """A query that returned no batch at all (the driver may do that for an empty table)."""
    return pa.table({})


def _integer(column: str) -> str:
    """The column's integers, NULL for anything else (CAST('abc' AS INTEGER) would be 0: a time of 0)."""
    c = _quote(column)
    return (f"(CASE WHEN typeof({c}) = 'integer' THEN {c} WHEN typeof({c}) = 'real' AND {c} = CAST({c} AS INTEGER) "
            f"THEN CAST({c} AS INTEGER) END)")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return text.replace("'", "''")
