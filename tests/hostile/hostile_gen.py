"""Generators of the hostile corpus: small inputs written at test time into temporary folders.

`Export` is a hand-written Nsight Systems SQLite export whose every row is known, so every number
the analysis prints can be checked by hand (BASE_TRUTH). Its tables carry the real exports' table
and column names (nsys 2025.3, see traces/examples/nvtx-features-2025.3.sqlite) with loose column
types, so that a case can put a NULL, a text or a REAL where nsys never would. Every damaged
variant is the base export with one thing changed (`variant(...)`).

One process (pid 100), one thread (tid 100), one stream (device 0, stream 7), times in ns:

    outer    [1000, 10000)   push/pop, default domain
      step_1 [2000, 5000)    k_gemm [3000, 3500) (corr 1), k_elem [3600, 4000) (corr 2)
      stepX1 [6000, 9000)    k_gemm [7000, 8000) (corr 3)
    memcpy HtoD [1500, 1600) launched in outer (corr 4); k_late [12000, 12300) launched outside every range (corr 5)

Kineto (`kineto_doc`) and manifests (`manifest`) have the same shape of ground truth.
"""
from __future__ import annotations

import copy
import gzip
import json
import sqlite3
from pathlib import Path

PID, TID = 100, 100
GPID = PID << 24
GTID = GPID | TID

STRINGS = {1: "k_gemm", 2: "k_elem", 3: "k_late", 4: "cudaLaunchKernel_v7000", 5: "cudaMemcpyAsync_v3020",
           6: "outer", 7: "step_1", 8: "stepX1"}
KERNEL_COLUMNS = ("start", "end", "deviceId", "contextId", "streamId", "correlationId", "globalPid", "demangledName",
                  "shortName", "registersPerThread", "gridX", "gridY", "gridZ", "blockX", "blockY", "blockZ",
                  "staticSharedMemory", "dynamicSharedMemory")
RUNTIME_COLUMNS = ("start", "end", "eventClass", "globalTid", "correlationId", "nameId", "returnValue")
MEMCPY_COLUMNS = ("start", "end", "deviceId", "contextId", "streamId", "correlationId", "globalPid", "bytes", "copyKind")
NVTX_COLUMNS = ("start", "end", "eventType", "rangeId", "text", "globalTid", "endGlobalTid", "textId", "domainId",
                "int64Value")
GPU_COLUMNS = ("vmId", "id", "name", "totalMemory", "memoryBandwidth", "clockRate", "smCount", "computeMajor",
               "computeMinor")


def kernel(start, end, corr, name, **over):
    row = dict(zip(KERNEL_COLUMNS, (start, end, 0, 1, 7, corr, GPID, name, name, 32, 1, 1, 1, 128, 1, 1, 0, 0)))
    row.update(over)
    return row


def call(start, end, corr, name=4, **over):
    row = dict(zip(RUNTIME_COLUMNS, (start, end, 1, GTID, corr, name, 0)))
    row.update(over)
    return row


def nvtx_range(start, end, text_id, event_type=59, **over):
    row = dict(zip(NVTX_COLUMNS, (start, end, event_type, None, None, GTID, None, text_id, 0, None)))
    row.update(over)
    return row


BASE = {
    "StringIds": [{"id": k, "value": v} for k, v in STRINGS.items()],
    "CUPTI_ACTIVITY_KIND_KERNEL": [kernel(3000, 3500, 1, 1), kernel(3600, 4000, 2, 2), kernel(7000, 8000, 3, 1),
                                   kernel(12000, 12300, 5, 3)],
    "CUPTI_ACTIVITY_KIND_RUNTIME": [call(1100, 1200, 4, 5), call(2100, 2200, 1), call(2300, 2400, 2),
                                    call(6100, 6200, 3), call(11000, 11100, 5)],
    "CUPTI_ACTIVITY_KIND_MEMCPY": [dict(zip(MEMCPY_COLUMNS, (1500, 1600, 0, 1, 7, 4, GPID, 1024, 1)))],
    "NVTX_EVENTS": [nvtx_range(1000, 10000, 6), nvtx_range(2000, 5000, 7), nvtx_range(6000, 9000, 8)],
    "TARGET_INFO_GPU": [dict(zip(GPU_COLUMNS, (0, 0, "NVIDIA H100 80GB HBM3", 85_520_809_984, 3_352_320_000_000,
                                               1_980_000_000, 132, 9, 0)))],
    "META_DATA_EXPORT": [{"name": "EXPORT_PRODUCT_VERSION", "value": "2025.3.2.0"},
                         {"name": "EXPORT_SCHEMA_VERSION", "value": "3.20.3"}],
}
COLUMNS = {"StringIds": ("id", "value"), "CUPTI_ACTIVITY_KIND_KERNEL": KERNEL_COLUMNS,
           "CUPTI_ACTIVITY_KIND_RUNTIME": RUNTIME_COLUMNS, "CUPTI_ACTIVITY_KIND_MEMCPY": MEMCPY_COLUMNS,
           "NVTX_EVENTS": NVTX_COLUMNS, "TARGET_INFO_GPU": GPU_COLUMNS, "META_DATA_EXPORT": ("name", "value")}
TYPES = {"value": "TEXT", "text": "TEXT", "name": "TEXT"}

# What `dsocr-analyze` must print for BASE, by hand from the rows above.
BASE_TRUTH = {
    "kernels": 4, "kernel_ns": 2200, "attributed_ns": 1900, "gpu_ops": 5,
    "ranges": {  # name: (instances, inclusive_ns, exclusive_ns, busy_ns, kernels)
        "outer": (1, 1900, 0, 1900, 3),
        "step_1": (1, 900, 900, 900, 2),
        "stepX1": (1, 1000, 1000, 1000, 1),
    },
}


class Export:
    """An nsys-like SQLite export built from `tables` (name -> rows as dicts)."""

    def __init__(self, tables: dict | None = None):
        self.tables = copy.deepcopy(BASE if tables is None else tables)
        self.columns = {name: list(COLUMNS.get(name, ())) for name in self.tables}
        self.views: dict[str, str] = {}        # a table served as a view over another name
        self.drop_columns: dict[str, list[str]] = {}
        self.types: dict[tuple[str, str], str] = {}

    # -- edits
    def rows(self, table: str) -> list[dict]:
        return self.tables[table]

    def without(self, *tables: str) -> "Export":
        for t in tables:
            self.tables.pop(t, None)
        return self

    def empty(self, *tables: str) -> "Export":
        for t in tables:
            self.tables[t] = []
        return self

    def drop_column(self, table: str, column: str) -> "Export":
        self.drop_columns.setdefault(table, []).append(column)
        return self

    def as_view(self, table: str) -> "Export":
        self.views[table] = f"{table}_DATA"
        return self

    # -- writing
    def write(self, path: Path) -> Path:
        path = Path(path)
        con = sqlite3.connect(path)
        try:
            for name, rows in self.tables.items():
                columns = [c for c in self.columns.get(name) or (list(rows[0]) if rows else ["x"])
                           if c not in self.drop_columns.get(name, [])]
                extra = [c for r in rows for c in r if c not in columns and c not in self.drop_columns.get(name, [])]
                columns += list(dict.fromkeys(extra))
                real = self.views.get(name, name)
                decl = ", ".join(f'"{c}" {self.types.get((name, c), TYPES.get(c, "INTEGER"))}' for c in columns)
                con.execute(f'CREATE TABLE "{real}" ({decl})')
                con.executemany(f'INSERT INTO "{real}" VALUES ({", ".join("?" * len(columns))})',
                                [tuple(_sql_value(r.get(c)) for c in columns) for r in rows])
                if real != name:
                    con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "{real}"')
            con.commit()
        finally:
            con.close()
        return path


class Raw:
    """A value written as given by SQL text (e.g. CAST(X'FF' AS TEXT): invalid UTF-8 in a TEXT column)."""

    def __init__(self, sql: str):
        self.sql = sql


def _sql_value(value):
    if isinstance(value, Raw):
        con = sqlite3.connect(":memory:")
        con.text_factory = bytes
        try:
            return con.execute(f"SELECT {value.sql}").fetchone()[0]
        finally:
            con.close()
    return value


def base_export(path: Path) -> Path:
    return Export().write(path)


SERIES = "WITH RECURSIVE s(value) AS (SELECT 0 UNION ALL SELECT value + 1 FROM s WHERE value < {n} - 1) "


def scaled_export(path: Path, steps: int) -> Path:
    """A larger export for the signal cases: `steps` ranges of 4 kernels each, one after another."""
    con = sqlite3.connect(path)
    try:
        con.executescript(
            "CREATE TABLE StringIds (id INTEGER, value TEXT);"
            f"CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL ({', '.join(f'{c} INTEGER' for c in KERNEL_COLUMNS)});"
            f"CREATE TABLE CUPTI_ACTIVITY_KIND_RUNTIME ({', '.join(f'{c} INTEGER' for c in RUNTIME_COLUMNS)});"
            "CREATE TABLE NVTX_EVENTS (start INTEGER, end INTEGER, eventType INTEGER, rangeId INTEGER, text TEXT, "
            "globalTid INTEGER, endGlobalTid INTEGER, textId INTEGER, domainId INTEGER, int64Value INTEGER);")
        con.executemany("INSERT INTO StringIds VALUES (?, ?)", STRINGS.items())
        con.execute(SERIES.format(n=steps) + f"""INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL
            SELECT 1000 * value + 500 + 100 * k, 1000 * value + 550 + 100 * k, 0, 1, 7, 4 * value + k, {GPID},
                   1 + k % 2, 1 + k % 2, 32, 1, 1, 1, 128, 1, 1, 0, 0
            FROM s, (SELECT 0 AS k UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)""")
        con.execute(SERIES.format(n=steps) + f"""INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME
            SELECT 1000 * value + 10 + 20 * k, 1000 * value + 20 + 20 * k, 1, {GTID}, 4 * value + k, 4, 0
            FROM s, (SELECT 0 AS k UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)""")
        con.execute(SERIES.format(n=steps) + f"""INSERT INTO NVTX_EVENTS
            SELECT 1000 * value, 1000 * value + 900, 59, NULL, NULL, {GTID}, NULL, 7, 0, NULL FROM s""")
        con.commit()
    finally:
        con.close()
    return path


# ------------------------------------------------------------------------------------------- Kineto

def kineto_events() -> list[dict]:
    """The same workload as BASE, as PyTorch-profiler events (us; integers so ns are exact)."""
    def x(cat, name, ts, dur, pid=PID, tid=TID, **args):
        return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}

    return [
        x("user_annotation", "outer", 1000, 9000),
        x("user_annotation", "step_1", 2000, 3000),
        x("user_annotation", "stepX1", 6000, 3000),
        x("cuda_runtime", "cudaMemcpyAsync", 1100, 100, correlation=4),
        x("cuda_runtime", "cudaLaunchKernel", 2100, 100, correlation=1),
        x("cuda_runtime", "cudaLaunchKernel", 2300, 100, correlation=2),
        x("cuda_runtime", "cudaLaunchKernel", 6100, 100, correlation=3),
        x("cuda_runtime", "cudaLaunchKernel", 11000, 100, correlation=5),
        x("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 1500, 100, pid=0, tid=7, correlation=4, device=0, stream=7),
        x("kernel", "k_gemm", 3000, 500, pid=0, tid=7, correlation=1, device=0, stream=7),
        x("kernel", "k_elem", 3600, 400, pid=0, tid=7, correlation=2, device=0, stream=7),
        x("kernel", "k_gemm", 7000, 1000, pid=0, tid=7, correlation=3, device=0, stream=7),
        x("kernel", "k_late", 12000, 300, pid=0, tid=7, correlation=5, device=0, stream=7),
    ]


# Kineto times are us: the same rows, 1000x the ns of BASE_TRUTH.
KINETO_TRUTH = {"kernels": 4, "kernel_ns": 2_200_000, "attributed_ns": 1_900_000,
                "ranges": {n: (i, a * 1000, b * 1000, c * 1000, k) for n, (i, a, b, c, k) in BASE_TRUTH["ranges"].items()}}


def kineto_doc(events: list | None = None, **top) -> dict:
    return {"schemaVersion": 1, "traceEvents": kineto_events() if events is None else events, **top}


def write_kineto(path: Path, doc, gz: bool = False) -> Path:
    text = doc if isinstance(doc, (str, bytes)) else json.dumps(doc)
    data = text.encode() if isinstance(text, str) else text
    Path(path).write_bytes(gzip.compress(data) if gz else data)
    return Path(path)


# ----------------------------------------------------------------------------------------- manifests

def manifest(**workload) -> dict:
    """A dsocr-manifest/1 of a small Gundam page (the capture's shape; numbers are plausible, not real)."""
    w = {"mode": "gundam", "image_width": 1654, "image_height": 2339, "tile_grid": [2, 3],
         "views": [{"name": "tiles", "count": 6, "side": 640, "grid": 10},
                   {"name": "global", "count": 1, "side": 1024, "grid": 16}],
         "image_tokens": 903, "text_tokens": 9, "prompt_tokens": 913, "generated_tokens": 4,
         "decode_kv_lengths": [914, 915, 916, 917]}
    w.update(workload)
    return {"schema": "dsocr-manifest/1", "workload": w, "model": {"preset": "official"},
            "environment": {"gpu_name": "NVIDIA H100 80GB HBM3"}}
