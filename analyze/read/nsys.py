"""Nsight Systems export (nsys 2021.2 .. 2026.2; SQLite file or Parquet folder) -> `Raw`.

Tables and columns are discovered by name (every table but StringIds may be absent, columns come
and go across versions: analyze/read/schema.py says which). The two big tables (GPU operations,
API calls) are read by two threads, each with its own connection, while this thread reads NVTX,
GPUs, metadata and the synchronisation records. Only the columns attribution needs are read here;
kernel names and launch geometry (`details`) are read when a command asks for them.

Implausible rows are left out with a warning that counts them (a GPU op without start or end, or
ending before it starts); an export that lacks a required column is refused with one line.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.analyze.keys import dense_index
from dsocr_perf.analyze.paths import is_table_folder
from dsocr_perf.analyze.read import raw as R
from dsocr_perf.analyze.read.nvtx import read_nvtx
from dsocr_perf.analyze.read.sqlite import INT_NULL

OPS_TABLES = (("CUPTI_ACTIVITY_KIND_KERNEL", R.KERNEL), ("CUPTI_ACTIVITY_KIND_MEMCPY", R.MEMCPY),
              ("CUPTI_ACTIVITY_KIND_MEMSET", R.MEMSET))
RUNTIME = "CUPTI_ACTIVITY_KIND_RUNTIME"
SYNC = "CUPTI_ACTIVITY_KIND_SYNCHRONIZATION"
KNOWN = ("CUPTI_ACTIVITY_KIND_KERNEL", RUNTIME, "NVTX_EVENTS", "TARGET_INFO_GPU", "META_DATA_EXPORT",
         "EXPORT_META_DATA")
REEXPORT = "re-export the report with `nsys export --type sqlite`"
GRAPH_LAUNCH = ("cudaGraphLaunch", "cuGraphLaunch")
TID_BITS = R.TID_BITS


def read_nsys(open_source, name: str, fmt: str) -> R.Raw:
    """`open_source()` opens a new connection to the export (one per thread)."""
    main = open_source()
    try:
        return _read(open_source, main, name, fmt)
    finally:
        main.close()


def _read(open_source, src, name: str, fmt: str) -> R.Raw:
    strings_table = src.table("StringIds")
    if strings_table is None or not any(src.table(t) for t in KNOWN):
        raise TraceError(f"{name} is an SQLite database but not an Nsight Systems export (no StringIds / CUPTI / "
                         "NVTX tables); export a report with `nsys export --type sqlite REPORT.nsys-rep`")
    strings = Strings(src, strings_table)
    graphs = strings.any_prefix(GRAPH_LAUNCH)
    ops_read = _Later(_with_source, open_source, _read_ops, graphs, name="dsocr-read-ops")
    calls_read = _Later(_with_source, open_source, _read_calls, graphs, name="dsocr-read-calls")
    nvtx = read_nvtx(src, strings.lookup)
    gpus = read_gpus(src)
    warnings: list[str] = list(nvtx.warnings)
    meta = read_meta(src, warnings)
    sync_keys = read_sync_keys(src)
    calls = _calls(calls_read.get(), strings)
    ops_warnings_at = len(warnings)
    _graph_warning(src, meta, calls, warnings)

    def ops() -> R.GpuOps:
        """The GPU ops, once their thread is done (it may still read while the engine starts on the calls)."""
        gpu_ops, op_warnings, _ = ops_read.get()
        warnings[ops_warnings_at:ops_warnings_at] = op_warnings
        return gpu_ops

    def details():
        parts = ops_read.get()[2]
        detail_source = open_source()
        try:
            return read_details(detail_source, parts, Strings(detail_source, strings_table))
        finally:
            detail_source.close()

    def gpu_metrics():
        from dsocr_perf.analyze.read.gpu_metrics import read_gpu_metrics

        metrics_source = open_source()
        try:
            return read_gpu_metrics(metrics_source)
        finally:
            metrics_source.close()

    return R.Raw(source="nsys", format=fmt, gpu_ops=ops, calls=calls, nvtx=nvtx, sync_keys=sync_keys, gpus=gpus,
                 meta=meta, warnings=warnings, details=details,
                 gpu_metrics=gpu_metrics if src.table("GPU_METRICS") else None)


class _Later:
    """A value a daemon thread works out; get() waits for it and raises the thread's error if it failed."""

    def __init__(self, function, *args, name: str):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(function, args), daemon=True, name=name)
        self._thread.start()

    def _run(self, function, args) -> None:
        try:
            self._value = function(*args)
        except BaseException as e:  # re-raised in the thread that asks
            self._error = e

    def get(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _with_source(open_source, reader, graphs: bool):
    src = open_source()
    try:
        return reader(src, graphs)
    finally:
        src.close()


class Strings:
    """StringIds, read whole once (names, API names, NVTX texts are a few thousand values)."""

    def __init__(self, src, table: str):
        c = src.columns(table)
        if "id" not in c or "value" not in c:
            raise TraceError(f"{src.name}: StringIds lacks its id or value column; {REEXPORT}")
        data = src.select(table, [c["id"], c["value"]])
        ids = R.int_column(data.column(0)).fill_null(-1).to_numpy()
        self.values = R.valid_text(data.column(1)).to_pylist()
        order = np.argsort(ids, kind="stable")
        self.ids, self.values = ids[order], [self.values[i] for i in order]

    def lookup(self, wanted) -> dict[int, str]:
        out = {}
        for i in wanted:
            pos = int(np.searchsorted(self.ids, i))
            if pos < len(self.ids) and self.ids[pos] == i and self.values[pos] is not None:
                out[int(i)] = self.values[pos]
        return out

    def codes(self, ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Dense codes (int32, -1 unknown) for string ids, and the distinct strings they index."""
        distinct, inverse = dense_index(ids)
        text = self.lookup(distinct.tolist())
        names = [text.get(int(i)) for i in distinct]
        known = np.array([n is not None for n in names], bool)
        code_of_distinct = np.where(known, np.cumsum(known) - 1, -1).astype(np.int32)
        return code_of_distinct[inverse], [n for n in names if n is not None]

    def any_prefix(self, prefixes) -> bool:
        return any(v is not None and v.startswith(prefixes) for v in self.values)


# ---------------------------------------------------------------------------------------------- GPU ops

def _read_ops(src, graphs: bool):
    """KERNEL, MEMCPY and MEMSET rows, the columns attribution needs, read into one set of arrays;
    `parts` says which rows of which table each op is, for reading its details later."""
    tables, parts, warnings = [], [], []
    for table_name, kind in OPS_TABLES:
        table = src.table(table_name)
        if table is None:
            continue
        c = src.columns(table)
        missing = [n for n in ("start", "end") if n not in c]
        if missing:
            raise TraceError(f"{src.name}: {table} has no {' or '.join(missing)} column, so its GPU operations "
                             f"cannot be placed in time; {REEXPORT}")
        wanted = {"start": "start", "end": "end", "correlation": "correlationid", "gpid": "globalpid"}
        if graphs:
            wanted["graph_node"] = "graphnodeid"
        present = {k: c[v] for k, v in wanted.items() if v in c}
        if "deviceid" in c and "streamid" in c:
            present["stream_key"] = (c["deviceid"], c["streamid"])
        tables.append((table, kind, present, c.get("copykind") if kind == R.MEMCPY else None))
    if not tables:
        return R.GpuOps.empty(), warnings, parts
    names = ("start", "end", "correlation", "gpid", "stream_key") + (("graph_node",) if graphs else ())
    out = {name: np.empty(sum(src.row_bound(t) for t, _, _, _ in tables), np.int64) for name in names}
    pieces, copy_kinds, at = [], [], 0
    for table, kind, present, copy_column in tables:
        n = src.read_into(table, present, out, at)
        for name in names:
            if name not in present:
                out[name][at:at + n] = -1
        if "correlation" not in present or "gpid" not in present:
            warnings.append(f"{table} has no correlationId/globalPid column: its {n:,} operations cannot be joined "
                            "to the calls that launched them and are in no range")
        keep = _plausible_ops(out["start"][at:at + n], out["end"][at:at + n], table, warnings)
        if copy_column is not None:
            copy_kinds.append((at, src.ints(table, {"copy_kind": copy_column}, rows_hint=n)["copy_kind"]))
        parts.append((table, kind, n, keep))
        pieces.append((kind, at, n, keep))
        at += n
    return _ops(out, at, pieces, copy_kinds), warnings, parts


def _plausible_ops(start: np.ndarray, end: np.ndarray, table: str, warnings: list[str]) -> np.ndarray | None:
    """Rows to keep (None: all): a start and an end, and end >= start."""
    if not start.size or (int(start.min()) != INT_NULL and bool((end >= start).all())):
        return None
    missing = (start == INT_NULL) | (end == INT_NULL)
    backwards = ~missing & (end < start)
    bad = missing | backwards
    if not bad.any():
        return None
    if missing.any():
        warnings.append(f"{int(missing.sum()):,} rows of {table} without a start or end time left out")
    if backwards.any():
        warnings.append(f"{int(backwards.sum()):,} rows of {table} that end before they start left out")
    return ~bad


def _ops(out: dict, rows: int, pieces: list, copy_kinds: list) -> R.GpuOps:
    """The GPU ops from the arrays read (NULL -> -1), implausible rows left out."""
    kind = np.empty(rows, np.int8)
    copy = np.full(rows, -1, np.int8)
    for k, at, n, _ in pieces:
        kind[at:at + n] = k
    for at, values in copy_kinds:
        copy[at:at + values.size] = np.where((values >= 0) & (values < 128), values, -1)
    columns = {name: a[:rows] for name, a in out.items()}
    for name in ("correlation", "gpid", "stream_key", "graph_node"):
        if name in columns and rows and int(columns[name].min()) == INT_NULL:
            columns[name] = np.where(columns[name] == INT_NULL, -1, columns[name])
    if any(keep is not None for *_, keep in pieces):
        keep = np.concatenate([np.ones(n, bool) if k is None else k for _, _, n, k in pieces])
        columns = {name: a[keep] for name, a in columns.items()}
        kind, copy = kind[keep], copy[keep]
    gpid = columns["gpid"]
    process = gpid >> TID_BITS
    if gpid.size and int(gpid.min()) < 0:
        process[gpid < 0] = -1
    graph_node = columns.get("graph_node")
    return R.GpuOps(start=columns["start"], end=columns["end"], kind=kind, process=process,
                    correlation=columns["correlation"], stream_key=columns["stream_key"],
                    graph_node=np.broadcast_to(np.int64(-1), (kind.size,)) if graph_node is None else graph_node,
                    copy_kind=copy)


# --------------------------------------------------------------------------------------------- API calls

def _read_calls(src, graphs: bool) -> dict:
    table = src.table(RUNTIME)
    if table is None:
        return {}
    c = src.columns(table)
    missing = [n for n in ("start", "end", "globaltid", "correlationid") if n not in c]
    if missing:
        raise TraceError(f"{src.name}: {table} lacks the column(s) {', '.join(missing)}; {REEXPORT}")
    wanted = {"correlation": "correlationid", "gtid": "globaltid", "start": "start", "end": "end", "name": "nameid"}
    return src.ints(table, {k: c[v] for k, v in wanted.items() if v in c})


def _calls(data: dict, strings: Strings) -> R.ApiCalls:
    if not data or not len(data["start"]):
        return R.ApiCalls.empty()
    start, end, gtid = data["start"], data["end"], data["gtid"]
    if int(start.min()) == INT_NULL or int(gtid.min()) == INT_NULL or not (end >= start).all():
        keep = (start != INT_NULL) & (end != INT_NULL) & (gtid != INT_NULL) & (end >= start)
        data = {k: v[keep] for k, v in data.items()}
        start, end, gtid = data["start"], data["end"], data["gtid"]
    name = data.get("name")
    if name is None:
        name_id, names = np.full(len(gtid), -1, np.int32), []
    else:
        name_id, names = strings.codes(name)
        names = [_strip_version(n) for n in names]
        names, name_id = _merge_equal(names, name_id)
    correlation = data["correlation"]
    if correlation.size and int(correlation.min()) == INT_NULL:
        correlation = np.where(correlation == INT_NULL, -1, correlation)
    return R.ApiCalls(start=start, end=end, process=gtid >> TID_BITS, thread=gtid, correlation=correlation,
                      name_id=name_id, names=names)


def _strip_version(name: str) -> str:
    """'cudaLaunchKernel_v7000' -> 'cudaLaunchKernel'."""
    head, sep, tail = name.rpartition("_v")
    return head if sep and tail.isdigit() else name


def _merge_equal(names: list[str], codes: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Codes of names that became equal after stripping the version suffix are merged."""
    distinct = sorted(set(names))
    if len(distinct) == len(names):
        return names, codes
    index = {n: i for i, n in enumerate(distinct)}
    remap = np.array([index[n] for n in names] + [-1], np.int32)
    return distinct, remap[codes]


def read_sync_keys(src) -> np.ndarray:
    """(process << 32 | correlation) of the API calls NVIDIA recorded as synchronisations (stream,
    event, context synchronise), sorted; the calls themselves are in the runtime table."""
    table = src.table(SYNC)
    if table is None:
        return np.zeros(0, np.int64)
    c = src.columns(table)
    if "correlationid" not in c or "globalpid" not in c:
        return np.zeros(0, np.int64)
    data = src.ints(table, {"correlation": c["correlationid"], "gpid": c["globalpid"]})
    ok = (data["correlation"] != INT_NULL) & (data["gpid"] != INT_NULL)
    return np.unique(((data["gpid"][ok] >> TID_BITS) << 32) | (data["correlation"][ok] & 0xFFFFFFFF))


# ------------------------------------------------------------------------------------ small tables

GPU_COLUMNS = (("device", "id", pa.int32()), ("name", "name", pa.string()), ("sm_count", "smCount", pa.int32()),
               ("clock_hz", "clockRate", pa.int64()), ("memory_bandwidth_Bps", "memoryBandwidth", pa.int64()),
               ("total_memory", "totalMemory", pa.int64()))
GPUS_SCHEMA = pa.schema([(n, t) for n, _, t in GPU_COLUMNS] + [("compute_capability", pa.string())])


def read_gpus(src) -> pa.Table:
    """One row per device of TARGET_INFO_GPU (the table repeats a device per context)."""
    table = src.table("TARGET_INFO_GPU")
    if table is None:
        return GPUS_SCHEMA.empty_table()
    c = src.columns(table)
    wanted = [s for _, s, _ in GPU_COLUMNS] + ["computeMajor", "computeMinor"]
    data = src.select(table, [c[w.lower()] for w in wanted if w.lower() in c])
    by_lower = {n.lower(): n for n in data.column_names}

    def values(source: str, dtype):
        if source.lower() not in by_lower:
            return [None] * data.num_rows
        column = data.column(by_lower[source.lower()])
        try:
            column = column.cast(dtype, safe=False) if column.type != dtype else column
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return [None] * data.num_rows
        if dtype == pa.string():
            column = R.valid_text(column.combine_chunks())
        return column.to_pylist()

    cols = [values(s, t) for _, s, t in GPU_COLUMNS]
    major, minor = values("computeMajor", pa.int64()), values("computeMinor", pa.int64())
    cc = [f"{a}.{b}" if a is not None and b is not None else None for a, b in zip(major, minor)]
    rows = sorted(set(zip(*cols, cc)), key=lambda r: (r[0] is None, r[0] or 0, str(r)))
    return pa.Table.from_pylist([dict(zip(GPUS_SCHEMA.names, r)) for r in rows], GPUS_SCHEMA)


def read_meta(src, warnings: list[str]) -> list[tuple[str, str]]:
    """(key, value) rows of the export's metadata tables (environment variables left out), plus
    ('source', 'nsys')."""
    meta = []
    for name in ("META_DATA_EXPORT", "EXPORT_META_DATA", "META_DATA_CAPTURE"):
        table = src.table(name)
        if table is None:
            continue
        c = src.columns(table)
        if "name" not in c or "value" not in c:
            continue
        data = src.select(table, [c["name"], c["value"]])
        keys = R.valid_text(data.column(0)).to_pylist()
        values = R.valid_text(data.column(1)).to_pylist()
        meta += [(k, v) for k, v in zip(keys, values) if k is not None and "ENVIRONMENT_VARIABLE" not in k]
    meta.append(("source", "nsys"))
    return meta


def _graph_warning(src, meta: list, calls: R.ApiCalls, warnings: list[str]) -> None:
    """CUDA graphs traced at graph level: one GRAPH_TRACE row per launch, no per-kernel rows."""
    table = src.table("CUPTI_ACTIVITY_KIND_GRAPH_TRACE")
    graph_rows = src.row_bound(table) if table else 0
    mode = next((v for k, v in meta if k.endswith("CUDA_GRAPH_TRACE_OPTIONS:MODE")), None)
    launches = 0
    if mode == "Graph" and calls.names:
        graph_codes = [i for i, n in enumerate(calls.names) if n.startswith(GRAPH_LAUNCH)]
        launches = int(np.isin(calls.name_id, graph_codes).sum()) if graph_codes else 0
    if graph_rows or launches:
        n = graph_rows or launches
        warnings.append(f"CUDA graphs were traced at graph level ({n} graph launches): per-kernel rows of graph "
                        "launches are absent from this export and their GPU time is not attributed; "
                        "capture with `nsys profile --cuda-graph-trace=node`")
        meta.append(("cuda_graph_trace", "graph"))


# ----------------------------------------------------------------------------------------- details

DETAIL_COLUMNS = (("grid_x", "gridX"), ("grid_y", "gridY"), ("grid_z", "gridZ"), ("block_x", "blockX"),
                  ("block_y", "blockY"), ("block_z", "blockZ"), ("registers", "registersPerThread"))


def read_details(src, parts, strings: Strings) -> pa.Table:
    """Per op, in op order: name, short_name, grid/block, registers, shared_mem, bytes."""
    pieces = []
    for table, kind, n, keep in parts:
        c = src.columns(table)
        wanted = {}
        if kind == R.KERNEL:
            wanted.update({"name": "demangledname", "short": "shortname"})
            wanted.update({k: v.lower() for k, v in DETAIL_COLUMNS})
            wanted.update({"static_smem": "staticsharedmemory", "dynamic_smem": "dynamicsharedmemory"})
        else:
            wanted.update({"bytes": "bytes", "copy_kind": "copykind"})
        data = src.ints(table, {k: c[v] for k, v in wanted.items() if v in c}, rows_hint=n)
        if keep is not None:
            data = {k: v[keep] for k, v in data.items()}
        rows = int(keep.sum()) if keep is not None else n
        pieces.append(_detail_piece(kind, data, rows, strings))
    if not pieces:
        return _detail_piece(R.KERNEL, {}, 0, strings)
    return pa.concat_tables(pieces).unify_dictionaries().combine_chunks()


NAME_TYPE = pa.dictionary(pa.int32(), pa.string())


def _detail_piece(kind: int, data: dict, rows: int, strings: Strings) -> pa.Table:
    """Names stay dictionary-encoded: 1e7 kernels share a few thousand names."""
    def ints(name, dtype):
        a = data.get(name)
        if a is None:
            return pa.nulls(rows, dtype)
        return pa.array(np.where(a == INT_NULL, 0, a), dtype, mask=a == INT_NULL)

    if kind == R.KERNEL:
        name = _names(data.get("name"), rows, strings)
        short = _names(data.get("short"), rows, strings) if "short" in data else name
        static, dynamic = data.get("static_smem"), data.get("dynamic_smem")
        smem = (pa.array(np.where(static == INT_NULL, 0, static) + np.where(dynamic == INT_NULL, 0, dynamic))
                if static is not None and dynamic is not None else pa.nulls(rows, pa.int64()))
        columns = {"name": name, "short_name": short, **{k: ints(k, pa.int32()) for k, _ in DETAIL_COLUMNS},
                   "shared_mem": smem, "bytes": pa.nulls(rows, pa.int64())}
    else:
        if kind == R.MEMCPY:
            copy = data.get("copy_kind")
            copy = np.zeros(rows, np.int64) if copy is None else np.where(copy == INT_NULL, 0, copy)
            distinct, inverse = np.unique(copy, return_inverse=True)
            labels = [f"[CUDA memcpy {R.MEMCPY_KINDS.get(int(k), 'Unknown')}]" for k in distinct]
            name = pa.DictionaryArray.from_arrays(pa.array(inverse.reshape(-1), pa.int32()), pa.array(labels))
        else:
            name = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array(["[CUDA memset]"]))
        columns = {"name": name, "short_name": name, **{k: pa.nulls(rows, pa.int32()) for k, _ in DETAIL_COLUMNS},
                   "shared_mem": pa.nulls(rows, pa.int64()), "bytes": ints("bytes", pa.int64())}
    return pa.table(columns)


def _names(ids: np.ndarray | None, rows: int, strings: Strings) -> pa.Array:
    """String ids -> a dictionary-encoded name column."""
    if ids is None:
        return pa.nulls(rows, NAME_TYPE)
    codes, names = strings.codes(ids)
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32(), mask=codes < 0), pa.array(names, pa.string()))


def open_export(path: Path, name: str):
    """A table source for an nsys export: SQLite file or Parquet/Arrow folder."""
    from dsocr_perf.analyze.read.parquet import ParquetDir
    from dsocr_perf.analyze.read.sqlite import SqliteFile

    if is_table_folder(path):
        return (lambda: ParquetDir(path, name)), "parquet"
    return (lambda: SqliteFile(path, name)), "sqlite"
