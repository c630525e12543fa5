"""Export a trace as Chrome-trace JSON that opens in ui.perfetto.dev (or chrome://tracing).

Layout of the timeline:
- every NVTX / user range on the CPU thread that opened it (the trace's own pid/tid), as a
  complete event (``ph: X``); push/pop ranges nest per thread. Start/end ranges may overlap
  anything, so they are async slices (``ph: b`` / ``ph: e``, one id each) on their process.
- every GPU operation (kernel, memcpy, memset) on a track per (device, stream): one synthetic
  process per device ("GPU 0 NVIDIA H100 ...", pid ``GPU_PID_BASE + device``), one thread per
  stream (tid = stream id).
- ``M`` metadata events name the processes and threads.

Times: ``ts``/``dur`` are microseconds written with exactly three decimals, i.e. nanoseconds,
relative to the trace's first event; ``otherData.dsocr_origin_ns`` holds that origin, so
``round(ts * 1000) + origin_ns`` gives back the trace clock to the nanosecond (relative times keep
the numbers small enough for a double to hold every nanosecond).

The file is written event by event from DuckDB cursors (no list of all events in memory), to a
temporary file that replaces the output when complete (analyze.paths); ``.gz`` output is gzip-compressed.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Iterator

import click

from dsocr_perf.analyze.paths import atomic_path, check_output, derived

GPU_PID_BASE = 1 << 30  # above any OS pid (Linux caps pids at 2**22)
BATCH = 10_000


def _us(ns: int) -> str:
    """Nanoseconds as a JSON number of microseconds with exactly three decimals (no float rounding)."""
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 1000}.{ns % 1000:03d}"


def _rows(con, sql: str) -> Iterator[dict]:
    cursor = con.execute(sql)
    columns = [d[0] for d in cursor.description]
    while True:
        batch = cursor.fetchmany(BATCH)
        if not batch:
            return
        for row in batch:
            yield dict(zip(columns, row))


def _columns(con, view: str) -> set[str]:
    return {row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()}


def _event(head: dict, ts_ns: int, dur_ns: int | None = None) -> str:
    """One event as JSON text; ts/dur are spliced in as exact decimal strings."""
    text = json.dumps(head, separators=(",", ":"), default=str)[:-1]
    text += f',"ts":{_us(ts_ns)}'
    if dur_ns is not None:
        text += f',"dur":{_us(dur_ns)}'
    return text + "}"


def trace_origin_ns(con) -> int:
    row = con.execute(
        "SELECT least((SELECT min(start_ns) FROM kernels), (SELECT min(start_ns) FROM ranges))"
    ).fetchall()[0]
    return int(row[0]) if row and row[0] is not None else 0


def events(trace) -> Iterator[str]:
    """Every event of the export as one JSON object text, metadata first."""
    con = trace.con
    origin = trace_origin_ns(con)
    gpu_names = {int(d): n for d, n in con.execute("SELECT device, name FROM gpus").fetchall() if d is not None}

    # Names for the CPU processes/threads that hold ranges.
    for (pid,) in con.execute("SELECT DISTINCT pid FROM ranges WHERE pid IS NOT NULL ORDER BY 1").fetchall():
        yield json.dumps({"ph": "M", "name": "process_name", "pid": int(pid), "args": {"name": f"process {pid}"}})
    for pid, tid in con.execute(
        "SELECT DISTINCT pid, tid FROM ranges WHERE pid IS NOT NULL AND tid IS NOT NULL ORDER BY 1, 2"
    ).fetchall():
        yield json.dumps({"ph": "M", "name": "thread_name", "pid": int(pid), "tid": int(tid),
                          "args": {"name": f"thread {tid} (CPU)"}})
    # One process per GPU, one thread per stream.
    for device, stream in con.execute(
        "SELECT DISTINCT coalesce(device, 0), coalesce(stream, 0) FROM kernels ORDER BY 1, 2"
    ).fetchall():
        pid = GPU_PID_BASE + int(device)
        yield json.dumps({"ph": "M", "name": "thread_name", "pid": pid, "tid": int(stream),
                          "args": {"name": f"stream {stream}"}})
    for (device,) in con.execute("SELECT DISTINCT coalesce(device, 0) FROM kernels ORDER BY 1").fetchall():
        pid = GPU_PID_BASE + int(device)
        label = f"GPU {device} {gpu_names.get(int(device), '')}".strip()
        yield json.dumps({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": label}})
        yield json.dumps({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": 1000 + int(device)}})

    range_cols = _columns(con, "ranges")
    extra = ", payload" if "payload" in range_cols else ", NULL AS payload"
    for r in _rows(con, f"""
            SELECT range_id, name, start_ns, coalesce(end_ns, start_ns) AS end_ns, pid, tid, path,
                   coalesce(style, 'pushpop') AS style {extra}
            FROM ranges ORDER BY start_ns, range_id"""):
        args = {"range_id": r["range_id"], "path": r["path"]}
        if r["payload"] is not None:
            args["payload"] = r["payload"]
        head = {"name": r["name"], "cat": "range", "pid": int(r["pid"] or 0), "tid": int(r["tid"] or 0)}
        if r["style"] == "startend":
            async_head = {**head, "id": int(r["range_id"])}
            yield _event({**async_head, "ph": "b", "args": args}, r["start_ns"] - origin)
            yield _event({**async_head, "ph": "e"}, r["end_ns"] - origin)
        else:
            yield _event({**head, "ph": "X", "args": args}, r["start_ns"] - origin, r["end_ns"] - r["start_ns"])

    kernel_cols = _columns(con, "kernels")
    optional = [c for c in ("category", "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "bytes")
                if c in kernel_cols]
    select_optional = "".join(f", {c}" for c in optional)
    for k in _rows(con, f"""
            SELECT op_id, kind, start_ns, end_ns, coalesce(device, 0) AS device, coalesce(stream, 0) AS stream,
                   correlation, name {select_optional}
            FROM kernels ORDER BY start_ns, op_id"""):
        args = {"op_id": k["op_id"], "kind": k["kind"], "correlation": k["correlation"]}
        if "grid_x" in k and k["grid_x"] is not None:
            args["grid"] = [k["grid_x"], k["grid_y"], k["grid_z"]]
            args["block"] = [k["block_x"], k["block_y"], k["block_z"]]
        for c in ("category", "bytes"):
            if k.get(c) is not None:
                args[c] = k[c]
        head = {"name": k["name"], "cat": k["kind"], "ph": "X",
                "pid": GPU_PID_BASE + int(k["device"]), "tid": int(k["stream"]), "args": args}
        yield _event(head, k["start_ns"] - origin, k["end_ns"] - k["start_ns"])


def write_chrome_trace(trace, out: Path, progress: bool = False) -> int:
    """Write the export to `out` (gzip when it ends in .gz); returns the number of trace events."""
    origin = trace_origin_ns(trace.con)
    total = trace.con.execute("SELECT (SELECT count(*) FROM kernels) + (SELECT count(*) FROM ranges)").fetchall()[0][0]
    count = 0
    with atomic_path(out) as tmp:
        opener = gzip.open if out.suffix == ".gz" else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            f.write('{"displayTimeUnit":"ns","otherData":' +
                    json.dumps({"dsocr_origin_ns": origin, "source": str(trace.path)}) +
                    ',"traceEvents":[\n')
            for i, text in enumerate(events(trace)):
                if i:
                    f.write(",\n")
                f.write(text)
                count += 1
                if progress and count % 50_000 == 0:
                    sys.stderr.write(f"\rexport-perfetto: {count:,} of ~{total:,} events ({100 * count / max(total, 1):.0f}%)")
                    sys.stderr.flush()
            f.write("\n]}\n")
    if progress:
        sys.stderr.write(f"\rexport-perfetto: {count:,} events\n")
    return count


def default_output(trace_path: Path) -> Path:
    return derived(trace_path, ".perfetto.json")


def register(cli, common) -> None:
    @cli.command("export-perfetto", short_help="Chrome-trace JSON for ui.perfetto.dev.")
    @common.trace_argument
    @click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
                  help="Output file (default: TRACE's stem + .perfetto.json beside it; .gz compresses).")
    @common.force_option
    @common.no_cache_option
    def export_perfetto_command(trace_path: Path, out: Path | None, force: bool, no_cache: bool) -> None:
        """Write TRACE as Chrome-trace JSON for ui.perfetto.dev: ranges on CPU threads, kernels per GPU stream."""
        out = check_output(out or default_output(trace_path), force, "-o", inputs=(trace_path,))
        trace = common.open(trace_path, no_cache)
        count = write_chrome_trace(trace, out, progress=sys.stderr.isatty())
        common.echo(f"wrote {out} ({count:,} events); open it at https://ui.perfetto.dev")
