"""An `nsys export --type parquetdir` (or `arrowdir`) folder as a table source: one `TABLE.parquet`
(or `TABLE.arrow`) per table, with the SQLite export's table and column names (nsys >= 2023.4).

Same interface as analyze.read.sqlite.SqliteFile (`tables`, `table`, `columns`, `select`, `ints`),
so the nsys reader does not care which one it reads. pyarrow decodes Parquet columns in parallel:
the same 1e6 kernel and runtime columns read in about a third of the SQLite time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.analyze.paths import TABLE_FILE_SUFFIXES as SUFFIXES
from dsocr_perf.analyze.read.sqlite import INT_NULL, PACK_BITS, to_int64


class ParquetDir:
    def __init__(self, path: Path, name: str | None = None):
        self.path, self.name = Path(path), name or str(path)
        self._files = {p.name[: -len(s)]: p for s in SUFFIXES for p in self.path.glob(f"*{s}") if p.is_file()}
        self.tables = set(self._files)
        self._schemas: dict[str, pa.Schema] = {}

    def close(self) -> None:
        pass

    def table(self, name: str) -> str | None:
        if name in self.tables:
            return name
        versions = [t for t in self.tables if t.startswith(name + "_V") and t[len(name) + 2:].isdigit()]
        return max(versions, key=lambda t: int(t[len(name) + 2:])) if versions else None

    def columns(self, table: str) -> dict[str, str]:
        return {n.lower(): n for n in self._schema(table).names}

    def select(self, table: str, columns: list[str], where_in: tuple[str, tuple[int, ...]] | None = None) -> pa.Table:
        """Columns of a table, every row: `where_in` (the rows a caller wants, see SqliteFile.select) is
        left to the caller, who filters again (filtering here would need pyarrow.compute, ~0.05 s to import)."""
        path = self._files[table]
        read = list(dict.fromkeys(columns))
        try:
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                data = pq.read_table(path, columns=read)
            else:
                import pyarrow.feather as feather

                data = feather.read_table(path, columns=read)
        except (OSError, pa.ArrowException) as e:
            raise TraceError(f"{path}: cannot read the table ({e}); export it again "
                             "(`nsys export --type parquetdir`)") from None
        return data.select(list(columns))

    def ints(self, table: str, columns: dict, rows_hint: int | None = None) -> dict[str, np.ndarray]:
        """As SqliteFile.ints (a pair of names is one packed column, a << 40 | b)."""
        names = [c for spec in columns.values() for c in (spec if isinstance(spec, tuple) else (spec,))]
        data = self.select(table, list(dict.fromkeys(names)))

        def column(real):
            try:
                return to_int64(data.column(real).combine_chunks())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise TraceError(f"{self._files[table]}: column {real} is not an integer column; export it again "
                                 "(`nsys export --type parquetdir`)") from None

        out = {}
        for name, spec in columns.items():
            if isinstance(spec, tuple):
                a, b = column(spec[0]), column(spec[1])
                out[name] = np.where((a == INT_NULL) | (b == INT_NULL), INT_NULL,
                                     (a << PACK_BITS) | (b & ((1 << PACK_BITS) - 1)))
            else:
                out[name] = column(spec)
        return out

    def read_into(self, table: str, columns: dict, out: dict[str, np.ndarray], offset: int) -> int:
        """As SqliteFile.read_into."""
        data = self.ints(table, columns)
        rows = len(next(iter(data.values()))) if data else 0
        for name in out:
            if offset + rows > out[name].size:
                out[name] = np.resize(out[name], offset + rows)
        for name, values in data.items():
            out[name][offset:offset + rows] = values
        return rows

    def row_bound(self, table: str) -> int:
        return self._metadata_rows(table)

    def _schema(self, table: str) -> pa.Schema:
        if table not in self._schemas:
            path = self._files[table]
            try:
                if path.suffix == ".parquet":
                    import pyarrow.parquet as pq

                    self._schemas[table] = pq.read_schema(path)
                else:
                    import pyarrow.ipc as ipc

                    with pa.memory_map(str(path)) as source:
                        self._schemas[table] = ipc.open_file(source).schema
            except (OSError, pa.ArrowException) as e:
                raise TraceError(f"{path}: not a readable table ({e}); export it again "
                                 "(`nsys export --type parquetdir`)") from None
        return self._schemas[table]

    def _metadata_rows(self, table: str) -> int:
        path = self._files[table]
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        return 0
