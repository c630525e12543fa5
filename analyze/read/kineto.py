"""PyTorch profiler (Kineto) Chrome-trace JSON -> the base tables of analyze.read.schema -> `Raw`.

    user_annotation (record_function)            -> ranges (push/pop, default domain)
    kernel | gpu_memcpy | gpu_memset              -> kernels (kind kernel | memcpy | memset)
    cuda_runtime | cuda_driver                    -> launches
    deviceProperties                              -> gpus;   top-level scalar keys -> meta
    top-level `dsocr_manifest` (the capture's)    -> meta 'manifest'

GPU operations join their launching call on `args.correlation`. Old traces (PyTorch <= 1.9, 2021)
say Kernel/Memcpy/Memset/Runtime/Operator, "stream 7" tids and "external id"; their record_function
ranges are plain Operator events, of which only the profiler's `ProfilerStep#N` is recognisable.
`gpu_user_annotation` events are not loaded: they are Kineto's own projection of the innermost
record_function onto each stream, which the analysis recomputes with nesting.

Times: `ts`/`dur` are microseconds, printed with up to 3 decimals (ns); since 2024 `ts` is relative
to `baseTimeNanoseconds`. Absolute ns = base + ts * 1000, computed on the decimal text (a float64
cannot hold 1.7e15 us to the ns), so every time is the exact integer the profiler wrote.
"""
from __future__ import annotations

import gc
import gzip
import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pyarrow as pa

from dsocr_perf.analyze.errors import TraceError

GPU_OP_KINDS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "memcpy": "memcpy",
                "gpu_memset": "memset", "memset": "memset"}
LAUNCH_CATEGORIES = {"cuda_runtime", "runtime", "cuda_driver"}
RANGE_CATEGORY = "user_annotation"
OLD_STEP_PREFIX = "ProfilerStep#"   # old traces: the step annotation is an 'Operator' event
_API_SUFFIX = re.compile(r"_v\d+$")
_LAST_INT = re.compile(r"-?\d+(?=\D*$)")


def load_kineto(path) -> dict[str, pa.Table]:
    """Read a .json / .json.gz profiler trace into the six base tables (Arrow)."""
    # Hundreds of thousands of small dicts: the cyclic GC would rescan them over and over (2x slower).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(Path(path))
    finally:
        if gc_was_enabled:
            gc.enable()


def _load(path: Path) -> dict[str, pa.Table]:
    doc = _read(path)
    events = doc.get("traceEvents") if isinstance(doc, dict) else None
    if not isinstance(events, list):
        raise TraceError(f"{path}: JSON without a traceEvents list, so not a PyTorch profiler trace; "
                         "export one with prof.export_chrome_trace(...)")
    base_ns = _int(doc.get("baseTimeNanoseconds")) or 0

    kernels, launches, annotations = [], [], []
    cpu_end_ns = None  # the last CPU-side timestamp: where a range still open at the end stops
    unusable, backwards = 0, 0   # complete events left out: no usable time / a negative duration
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        category = str(e.get("cat", "")).lower()
        start = _ns(e.get("ts"))
        dur = _ns(e.get("dur")) if "dur" in e else 0
        if start is not None:
            start = _fits(start + base_ns)
        end = _fits(start + dur) if start is not None and dur is not None else None
        if start is None or end is None:
            unusable += 1
            continue
        if dur < 0:
            backwards += 1
            continue
        args = e.get("args") if isinstance(e.get("args"), dict) else {}
        kind = GPU_OP_KINDS.get(category)
        if kind is not None:
            kernels.append((kind, start, end, e, args))
            continue
        if category == "trace":   # the profiler's own span: pid 'Spans'/'Traces', not a process
            continue
        if cpu_end_ns is None or end > cpu_end_ns:
            cpu_end_ns = end
        if category in LAUNCH_CATEGORIES:
            launches.append((start, end, e, args))
        elif category == RANGE_CATEGORY or (
                category == "operator" and str(e.get("name", "")).startswith(OLD_STEP_PREFIX)):
            annotations.append((start, end, e))

    warnings: list[str] = []
    if unusable:
        warnings.append(f"{unusable:,} events whose ts or dur is not a number of microseconds within int64 ns (text, "
                        "NaN, Infinity, 1e30) left out")
    if backwards:
        warnings.append(f"{backwards:,} events with a negative duration left out")
    launch_table, pid_of_correlation = _launches(launches)
    tables = {
        "kernels": _kernels(kernels, pid_of_correlation),
        "launches": launch_table,
        "ranges": _ranges(annotations, cpu_end_ns, warnings),
        "gpus": _gpus(doc.get("deviceProperties"), kernels),
        "meta": _meta(doc, warnings, _embedded_manifest(doc)),
    }
    return tables


def _read(path: Path):
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TraceError(f"{path}: cannot read the trace ({e.strerror or e})") from None
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        # parse_float=str keeps '1712195495505543.247' as text: converted exactly by _ns
        return json.loads(raw, parse_float=str)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise TraceError(f"{path}: cannot read the gzip trace ({e}); the file is damaged, copy it again") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not UTF-8 text, so not a PyTorch profiler JSON trace; give the file "
                         "prof.export_chrome_trace(...) wrote") from None
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                         "the trace is truncated or damaged: export it again") from None
    except RecursionError:
        raise TraceError(f"{path}: JSON nested too deeply, not a PyTorch profiler trace; give the file "
                         "prof.export_chrome_trace(...) wrote") from None


INT64 = (-(1 << 63), (1 << 63) - 1)


def _fits(value: int | None) -> int | None:
    """Only values an int64 column can hold; anything beyond is not a time of this trace."""
    return value if value is not None and INT64[0] <= value <= INT64[1] else None


def _ns(value) -> int | None:
    return _fits(_ns_any(value))


def _ns_any(value) -> int | None:
    """Microseconds (JSON int, or the decimal text of a JSON float) -> integer nanoseconds, exactly."""
    if type(value) is int:
        return value * 1000
    if type(value) is str:
        whole, _, frac = value.partition(".")
        if whole.isdigit() and len(frac) <= 3 and (frac.isdigit() or not frac):
            return int(whole) * 1000 + int(frac.ljust(3, "0"))
        try:  # exponent, sign, or more than 3 decimals: round half to even at the ns
            return int((Decimal(value) * 1000).to_integral_value())
        except (InvalidOperation, ValueError):
            return None
    if type(value) is float:
        return round(value * 1000) if value == value and abs(value) < 1e300 else None
    return None


def _int(value) -> int | None:
    return _fits(_int_any(value))


def _int_any(value) -> int | None:
    """pid / tid / stream / device as an int: 7, '7', 'stream 7' -> 7; anything else -> None."""
    if type(value) is int:
        return value
    if isinstance(value, str):
        match = _LAST_INT.search(value)
        return int(match.group()) if match else None
    return None


def _launches(launches):
    corr, pid, tid, start, end, api = [], [], [], [], [], []
    pid_of_correlation: dict[int, int | None] = {}
    for s, e_ns, e, args in launches:
        c = _int(args.get("correlation"))
        if c is None:  # nothing can join to it
            continue
        p = _int(e.get("pid"))
        corr.append(c)
        pid.append(p)
        tid.append(_int(e.get("tid")))
        start.append(s)
        end.append(e_ns)
        api.append(_API_SUFFIX.sub("", str(e.get("name", ""))))
        pid_of_correlation[c] = p
    table = pa.table({"correlation": pa.array(corr, pa.int64()), "gpid": pa.array(pid, pa.int64()),
                      "pid": pa.array(pid, pa.int64()), "tid": pa.array(tid, pa.int64()),
                      "start_ns": pa.array(start, pa.int64()), "end_ns": pa.array(end, pa.int64()),
                      "api_name": pa.array(api, pa.string())})
    return table, pid_of_correlation


def _kernels(ops, pid_of_correlation):
    # A GPU op with no launching call in the trace still belongs to the traced process when there is one.
    processes = set(pid_of_correlation.values())
    lone_pid = next(iter(processes)) if len(processes) == 1 else None
    ops = sorted(ops, key=lambda op: (op[1], op[2]))
    cols = {c: [] for c in ("kind", "start_ns", "end_ns", "device", "stream", "pid", "correlation", "name",
                            "short_name", "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z",
                            "registers", "shared_mem", "bytes", "graph_node")}
    for kind, start, end, e, args in ops:
        name = str(e.get("name", ""))
        correlation = _int(args.get("correlation"))
        device = _int(args.get("device"))
        stream = _int(args.get("stream"))
        grid, block = _triple(args.get("grid")), _triple(args.get("block"))
        cols["kind"].append(kind)
        cols["start_ns"].append(start)
        cols["end_ns"].append(end)
        cols["device"].append(device if device is not None else _int(e.get("pid")))
        cols["stream"].append(stream if stream is not None else _int(e.get("tid")))
        cols["pid"].append(pid_of_correlation.get(correlation, lone_pid))
        cols["correlation"].append(correlation)
        cols["name"].append(name)
        cols["short_name"].append(_short_name(name, kind))
        for axis, value in zip(("x", "y", "z"), grid):
            cols[f"grid_{axis}"].append(value)
        for axis, value in zip(("x", "y", "z"), block):
            cols[f"block_{axis}"].append(value)
        cols["registers"].append(_int(args.get("registers per thread")))
        cols["shared_mem"].append(_int(args.get("shared memory")))
        cols["bytes"].append(_int(args.get("bytes")))
        cols["graph_node"].append(_int(args.get("graph node id", args.get("graphNodeId"))))
    int32 = ("device", "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "registers")
    arrays = {c: pa.array(v, pa.int32() if c in int32 else pa.string() if c in ("kind", "name", "short_name")
                          else pa.int64()) for c, v in cols.items()}
    arrays["op_id"] = pa.array(range(len(ops)), pa.int64())
    arrays["gpid"] = arrays["pid"]
    return pa.table(arrays)


def _triple(value):
    if isinstance(value, list) and len(value) == 3:
        return tuple(_int(v) for v in value)
    return (None, None, None)


def _short_name(name: str, kind: str) -> str:
    """Base name like nsys shortName: 'void at::native::foo<T>(args)' -> 'foo'; memcpy 'Memcpy HtoD'."""
    if kind != "kernel":
        return " ".join(name.split()[:2]) if name.startswith("Memcpy") else name.split(" (")[0]
    bare = name.replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    if bare.startswith("void "):
        bare = bare[5:]
    qualified = re.split(r"[<(]", bare, maxsplit=1)[0].strip()
    return qualified.rsplit("::", 1)[-1] or name


def _ranges(annotations, cpu_end_ns, warnings):
    """record_function intervals as push/pop ranges.

    A record_function still open when the profiler stopped is written with dur 0 (seen in the 2023
    step-based HTA trace: the last `Optimizer.step#SGD.step` has dur 0, yet its kernels ran and Kineto
    wrote their gpu_user_annotation). A dur-0 annotation that is the LAST one to start on its thread
    is therefore taken as open until the last CPU timestamp of the trace; other dur-0 annotations
    are genuinely empty (integer-us traces round short ones to 0) and keep end = start.
    """
    last_start: dict[tuple, int] = {}
    for start, _, e in annotations:
        key = (_int(e.get("pid")), _int(e.get("tid")))
        last_start[key] = max(last_start.get(key, start), start)
    rows = []
    open_names = []
    for start, end, e in annotations:
        pid, tid = _int(e.get("pid")), _int(e.get("tid"))
        if end == start and start == last_start[(pid, tid)] and cpu_end_ns is not None and cpu_end_ns > start:
            end = cpu_end_ns
            open_names.append(str(e.get("name", "")))
        rows.append((start, -end, str(e.get("name", "")), pid, tid))
    if open_names:
        warnings.append(f"{len(open_names)} record_function range(s) still open when the profiler stopped "
                        f"({', '.join(sorted(set(open_names))[:3])}): taken to end at the trace's last CPU event")
    rows.sort()  # by start, longer first: parents before children
    n = len(rows)
    return pa.table({
        "range_id": pa.array(range(n), pa.int64()),
        "name": pa.array([r[2] for r in rows], pa.string()),
        "domain": pa.array([""] * n, pa.string()),
        "start_ns": pa.array([r[0] for r in rows], pa.int64()),
        "end_ns": pa.array([-r[1] for r in rows], pa.int64()),
        "gpid": pa.array([r[3] for r in rows], pa.int64()),
        "pid": pa.array([r[3] for r in rows], pa.int64()),
        "tid": pa.array([r[4] for r in rows], pa.int64()),
        "style": pa.array(["pushpop"] * n, pa.string()),
    })


def _gpus(properties, ops):
    rows = {}
    for p in properties if isinstance(properties, list) else []:
        if not isinstance(p, dict) or _int(p.get("id")) is None:
            continue
        major, minor = p.get("computeMajor"), p.get("computeMinor")
        name = p.get("name")
        rows[_int(p["id"])] = (
            name if isinstance(name, str) else None, _int(p.get("numSms")), _int(p.get("totalGlobalMem")),
            f"{major}.{minor}" if major is not None and minor is not None else None)
    for _, _, _, e, args in ops:  # a device that ran work but is missing from deviceProperties
        device = _int(args.get("device"))
        device = device if device is not None else _int(e.get("pid"))
        if device is not None and device not in rows:
            rows[device] = (None, None, None, None)
    devices = sorted(rows)
    return pa.table({
        "device": pa.array(devices, pa.int32()),
        "name": pa.array([rows[d][0] for d in devices], pa.string()),
        "sm_count": pa.array([rows[d][1] for d in devices], pa.int32()),
        "total_memory": pa.array([rows[d][2] for d in devices], pa.int64()),
        "compute_capability": pa.array([rows[d][3] for d in devices], pa.string()),
    })


def _embedded_manifest(doc: dict) -> str | None:
    """The dsocr manifest the capture's profiler pass stores in the trace's metadata."""
    value = doc.get("dsocr_manifest")
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict) else None


def _meta(doc: dict, warnings: list[str], manifest: str | None):
    """Top-level scalar keys (schemaVersion, baseTimeNanoseconds, cupti_version, ...), distributedInfo,
    the embedded manifest, and warnings."""
    keys, values = ["trace_format"], ["kineto"]
    for key, value in doc.items():
        if isinstance(value, (str, int, float)):
            keys.append(key)
            values.append(str(value))
    if isinstance(doc.get("distributedInfo"), dict):
        keys.append("distributedInfo")
        values.append(json.dumps(doc["distributedInfo"], sort_keys=True))
    if manifest is not None:
        keys.append("manifest")
        values.append(manifest)
    for w in warnings:
        keys.append("warning")
        values.append(w)
    return pa.table({"key": pa.array(keys, pa.string()), "value": pa.array(values, pa.string())})


# ------------------------------------------------------------------------------------- -> Raw

def read_kineto(path: Path):
    """A profiler trace as `Raw`: the base tables (checked by analyze.read.schema) as NumPy columns.
    Threads are (pid, tid) pairs; the ranges are record_function intervals (push/pop)."""
    import numpy as np

    from dsocr_perf.analyze.read import raw as R
    from dsocr_perf.analyze.read import schema
    from dsocr_perf.analyze.read.nvtx import nvtx_from_ranges

    tables = schema.normalize(load_kineto(path), source=f"kineto reader ({path.name})")
    k, calls_t, ranges = tables["kernels"], tables["launches"], tables["ranges"]

    def ints(table, name, fill=-1):
        return np.asarray(table.column(name).fill_null(fill).to_numpy(), np.int64)

    thread_pairs = np.stack([np.r_[ints(calls_t, "pid"), ints(ranges, "pid")],
                             np.r_[ints(calls_t, "tid"), ints(ranges, "tid")]], axis=1) \
        if calls_t.num_rows + ranges.num_rows else np.zeros((0, 2), np.int64)
    _, thread_of = np.unique(thread_pairs, axis=0, return_inverse=True)
    thread_of = thread_of.reshape(-1)
    call_thread, range_thread = thread_of[:calls_t.num_rows], thread_of[calls_t.num_rows:]

    kind = np.array([R.OP_KINDS.index(v) for v in k.column("kind").to_pylist()], np.int8)
    device, stream = ints(k, "device"), ints(k, "stream")
    ops = R.GpuOps(start=ints(k, "start_ns"), end=ints(k, "end_ns"), kind=kind, process=ints(k, "gpid"),
                   correlation=ints(k, "correlation"),
                   stream_key=np.where((device >= 0) & (stream >= 0), (device << R.STREAM_BITS) | stream, -1),
                   graph_node=ints(k, "graph_node"), copy_kind=np.full(k.num_rows, -1, np.int8))
    names = sorted(set(calls_t.column("api_name").to_pylist()))
    index = {n: i for i, n in enumerate(names)}
    calls = R.ApiCalls(start=ints(calls_t, "start_ns"), end=ints(calls_t, "end_ns"), process=ints(calls_t, "gpid"),
                       thread=call_thread.astype(np.int64), correlation=ints(calls_t, "correlation"),
                       name_id=np.array([index[n] for n in calls_t.column("api_name").to_pylist()], np.int32),
                       names=names, os_ids=(ints(calls_t, "pid"), ints(calls_t, "tid")))
    meta = list(zip(tables["meta"].column("key").to_pylist(), tables["meta"].column("value").to_pylist()))
    warnings = [v for key, v in meta if key == "warning"]
    meta = [(key, v) for key, v in meta if key != "warning"]
    nvtx = nvtx_from_ranges(ranges, tables["marks"], range_thread.astype(np.int64))
    details = k.select(["name", "short_name", "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z",
                        "registers", "shared_mem", "bytes"])
    return R.Raw(source="kineto", format="kineto-json", gpu_ops=ops, calls=calls, nvtx=nvtx,
                 sync_keys=np.zeros(0, np.int64), gpus=tables["gpus"], meta=meta + [("source", "kineto")],
                 warnings=warnings, details=lambda: details)
