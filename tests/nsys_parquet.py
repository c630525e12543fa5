"""An nsys SQLite export written as an `nsys export --type parquetdir` folder: one TABLE.parquet per
table, same names; globalTid/globalPid as uint64 and StringIds.id as int32, as nsys 2023.4 writes them
(../shared/docs/nsys-sqlite-schema.md, "The same tables as Parquet or Arrow")."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

UINT64 = {"globaltid", "globalpid", "endglobaltid"}


def to_parquetdir(sqlite: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(f"file:{sqlite}?mode=ro", uri=True)
    db.text_factory = lambda raw: raw.decode("utf-8", "replace")
    tables = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
        rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
        arrays = {}
        for i, name in enumerate(columns):
            values = [r[i] for r in rows]
            kinds = {type(v) for v in values if v is not None}
            if kinds <= {int}:
                dtype = pa.uint64() if name.lower() in UINT64 else pa.int32() if (table, name) == ("StringIds", "id") \
                    else pa.int64()
            elif kinds <= {int, float}:
                dtype = pa.float64()
            elif kinds <= {bytes}:
                dtype = pa.binary()
            else:
                dtype, values = pa.string(), [None if v is None else str(v) for v in values]
            if dtype == pa.uint64():
                values = [None if v is None else v & 0xFFFFFFFFFFFFFFFF for v in values]
            arrays[name] = pa.array(values, dtype)
        pq.write_table(pa.table(arrays) if arrays else pa.table({}), folder / f"{table}.parquet")
    db.close()
    return folder
