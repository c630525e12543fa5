"""PyTorch profiler (Kineto) Chrome-trace JSON -> the base tables of analyze.schema.

    user_annotation (record_function)            -> ranges (push/pop, default domain)
    kernel | gpu_memcpy | gpu_memset              -> kernels (kind kernel | memcpy | memset)
    cuda_runtime | cuda_driver                    -> launches
    deviceProperties                              -> gpus;   top-level scalar keys -> meta
    NAME.json beside the trace (dsocr manifest)   -> meta 'manifest'

GPU operations join their launching call on `args.correlation`. Old traces (PyTorch <= 1.9, 2021)
say Kernel/Memcpy/Memset/Runtime/Operator, "stream 7" tids and "external id"; their record_function
ranges are plain Operator events, of which only the profiler's `ProfilerStep#N` is recognisable.
`gpu_user_annotation` events are not loaded: they are Kineto's own projection of the innermost
record_function onto each stream, which the analysis recomputes with nesting (schema doc §6.4).

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
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        category = str(e.get("cat", "")).lower()
        start = _ns(e.get("ts"))
        if start is None:
            continue
        start += base_ns
        end = start + max(_ns(e.get("dur")) or 0, 0)
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
    launch_table, pid_of_correlation = _launches(launches)
    tables = {
        "kernels": _kernels(kernels, pid_of_correlation),
        "launches": launch_table,
        "ranges": _ranges(annotations, cpu_end_ns, warnings),
        "gpus": _gpus(doc.get("deviceProperties"), kernels),
        "meta": _meta(doc, warnings, _manifest_json(path)),
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
        raise TraceError(f"{path}: not UTF-8 text, so not a PyTorch profiler JSON trace") from None
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                         "the trace is truncated or damaged: export it again") from None
    except RecursionError:
        raise TraceError(f"{path}: JSON nested too deeply, not a PyTorch profiler trace") from None


def _ns(value) -> int | None:
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
        return round(value * 1000)
    return None


def _int(value) -> int | None:
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
    for start, end, e in annotations:
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
        rows[_int(p["id"])] = (
            p.get("name"), _int(p.get("numSms")), _int(p.get("totalGlobalMem")),
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


def _manifest_json(path: Path) -> str | None:
    from dsocr_perf.analyze.sidecar import sidecar_manifest

    manifest = sidecar_manifest(path)
    return None if manifest is None else json.dumps(manifest)


def _meta(doc: dict, warnings: list[str], manifest: str | None):
    """Top-level scalar keys (schemaVersion, baseTimeNanoseconds, cupti_version, ...), distributedInfo,
    the sidecar manifest, and warnings."""
    keys, values = ["trace_format"], ["kineto"]
    for key, value in doc.items():
        if isinstance(value, (str, int, float)):
            keys.append(key)
            values.append(str(value))
    if isinstance(doc.get("distributedInfo"), dict):
        keys.append("distributedInfo")
        values.append(json.dumps(doc["distributedInfo"], sort_keys=True))
    if manifest is not None:  # analyze.load: meta 'manifest' becomes Trace.manifest
        keys.append("manifest")
        values.append(manifest)
    for w in warnings:  # analyze.load turns meta rows with key 'warning' into Trace.warnings
        keys.append("warning")
        values.append(w)
    return pa.table({"key": pa.array(keys, pa.string()), "value": pa.array(values, pa.string())})
