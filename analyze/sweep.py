"""The stage table of an export without a cache, as a sorted sweep over NumPy arrays.

Same semantics as analyze.attribution (NVIDIA's launch-time rule), computed without DuckDB joins.
Reading (analyze.load._open_swept): the two big tables (GPU ops, API calls) go from SQLite (ADBC) to
Arrow to NumPy in two threads (Readers), only the columns attribution needs, while the caller's
thread reads NVTX, gpus and meta (read_small_tables, analyze.nvtx) and imports DuckDB. DuckDB then
holds only small tables, Arrow views and the final `stages` table (store), so the rest of the CLI
reads the same names as with the DuckDB engine.

1. op -> launching call: CallIndex, a lookup table on (process, correlation) built by the calls
   reader's thread.
2. Push/pop ranges sorted per thread by range_id (= start, then longer first): a range's parent is
   found by climbing from the range just before it until one is still open at its start.
3. Innermost push/pop range of each op: the last range of its thread starting at or before the call
   (`searchsorted` on a packed (thread << 46 | start) key), climbed until it ends at or after the call.
4. Per innermost range: kernel ns, counts, first/last op, streams; rolled up to every ancestor by
   depth (deepest level first) with `np.add.at` / `np.minimum.at`.
5. Start/end ranges (few) take the ops of their thread between their start and end from the ops
   sorted by (thread, call start). Steps 3-4 run in a second thread meanwhile.
6. Ranges whose kernels ran on several streams: exact busy time as the union of intervals.
7. Per range name with integer name ids (strings only for the distinct names).

Anything this sweep does not model (push/pop ranges that do not nest, CUDA graph nodes, duplicate
(process, correlation) keys, timestamps too wide to pack, no NVTX ranges) raises Unsupported: the
caller falls back to the DuckDB engine. tests/test_sweep.py checks both engines give identical
stage rows on every real export.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPS_TABLES = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET")
OPS_COLUMNS = ("start", "end", "deviceId", "streamId", "correlationId", "globalPid")
TIME_BITS = 46  # packed (thread << 46 | time - t0) keys: ~19.5 h of trace, 2**17 threads with ranges


class Unsupported(Exception):
    """The trace needs the general (DuckDB) engine."""


class Readers:
    """GPU ops and API calls, read in two threads (own SQLite connections; ADBC and pyarrow release
    the GIL). They need no DuckDB, so they start before DuckDB is even imported."""

    def __init__(self, path: Path):
        self._result: dict = {}
        self._threads = [threading.Thread(target=self._read, args=(key, reader, path), name=f"dsocr-sweep-{key}")
                         for key, reader in (("ops", _read_ops), ("calls", _read_calls))]
        for thread in self._threads:
            thread.start()

    def _read(self, key, reader, path):
        from dsocr_perf.analyze import nsys

        try:
            own = nsys._Sqlite(path)
            try:
                self._result[key] = reader(own)
            finally:
                own.close()
        except BaseException as e:  # re-raised by join(), in the caller's thread
            self._result.setdefault("error", e)

    def join_quietly(self) -> None:
        """Wait for the threads (after an error elsewhere: no reader outlives the load)."""
        for thread in self._threads:
            thread.join()

    def join(self) -> tuple[dict, dict]:
        for thread in self._threads:
            thread.join()
        if "error" in self._result:
            raise self._result["error"]
        return self._result.pop("ops"), self._result.pop("calls")


@dataclass
class SmallTables:
    """What the sweep reads besides the two big tables: NVTX (analyze.nvtx), gpus and meta."""
    nvtx: object
    gpus: object
    meta: list
    warnings: list


def read_small_tables(path: Path) -> SmallTables:
    """Read in the caller's thread while Readers read the big tables (no DuckDB involved)."""
    from dsocr_perf.analyze import nsys
    from dsocr_perf.analyze.nvtx import read_nvtx

    sq = nsys._Sqlite(path)
    try:
        if sq.table("StringIds") is None:
            raise Unsupported("no StringIds")
        warnings: list[str] = []
        nvtx = read_nvtx(sq, payloads=False)
        return SmallTables(nvtx=nvtx, gpus=nsys.read_gpus(sq), meta=nsys.read_meta(sq, warnings), warnings=warnings)
    finally:
        sq.close()


@dataclass
class Swept:
    small: SmallTables
    ops: dict           # per GPU op: kind, start, end (what store() keeps of the ops table)
    per_op: dict        # per GPU op: launched, tid, pp_range, has_pp, in_se
    stats: dict         # per range: the range_stats metrics


def sweep(readers: Readers, small: SmallTables) -> Swept:
    """Wait for the big tables and attribute (Unsupported where the sweep's model does not hold)."""
    ops, calls = readers.join()
    nvtx = small.nvtx
    if not nvtx.name_id.size:
        raise Unsupported("no NVTX ranges")
    if (nvtx.thread < 0).any():
        raise Unsupported("ranges without a thread")
    ranges = {"range_id": np.arange(nvtx.name_id.size, dtype=np.int64), "name_id": nvtx.name_id,
              "start_ns": nvtx.ranges.column("start_ns").to_numpy(), "end_ns": nvtx.ranges.column("end_ns").to_numpy(),
              "thread": nvtx.thread, "pushpop": nvtx.pushpop, "same_thread": nvtx.same_thread, "names": nvtx.names}
    stats, per_op = attribute(ops, calls, ranges)
    return Swept(small=small, ops=ops, per_op=per_op, stats=stats)


def stage_facts(swept: Swept):
    """What the stage table prints (analyze.load.StageFacts), straight from the arrays."""
    from dsocr_perf.analyze.load import STAGE_COLUMNS, StageFacts

    rows = stage_rows(swept.stats)
    stages = [dict(zip(STAGE_COLUMNS + ("depth",), values))
              for values in zip(*(rows[c].tolist() for c in STAGE_COLUMNS + ("depth",)))]
    ops, per_op = swept.ops, swept.per_op
    kernel = ops["kind"] == 0
    dur = ops["end"] - ops["start"]
    inside = kernel & (per_op["has_pp"] | per_op["in_se"])
    gpus = swept.small.gpus
    return StageFacts(stages=stages, ranges=len(swept.stats["range_id"]), ops=len(dur), kernels=int(kernel.sum()),
                      kernel_ns=int(dur[kernel].sum()), attributed_ns=int(dur[inside].sum()),
                      gpus=list(zip(*(gpus.column(c).to_pylist() for c in
                                      ("device", "name", "memory_bandwidth_Bps", "total_memory")))))


def unlaunched(swept: Swept) -> int:
    """GPU operations without a launching API call in the trace."""
    return int((~swept.per_op["launched"]).sum())


def store(db, swept: Swept) -> None:
    """The tables the stage command reads, in DuckDB `db`: base_ranges (and the `_ranges` view),
    base_marks, gpus, meta, `_ops` (op_id, kind, start_ns, end_ns, tid, pp_range), `_se_direct`
    (op_id) and `stages`. The big ones are Arrow tables registered, not copied."""
    import pyarrow as pa

    from dsocr_perf.analyze import nsys

    small = swept.small
    nsys.store_nvtx(db, small.nvtx, copy=False)
    nsys.store_gpus(db, small.gpus)
    nsys.store_meta(db, small.meta)
    ops, per_op = swept.ops, swept.per_op
    op_id = np.arange(len(ops["start"]), dtype=np.int64)
    db.register("_ops", pa.table({
        "op_id": op_id, "kind": ops["kind"].astype(np.uint8), "start_ns": ops["start"], "end_ns": ops["end"],
        "tid": pa.array(per_op["tid"], mask=~per_op["launched"]),
        "pp_range": pa.array(per_op["pp_range"], mask=~per_op["has_pp"])}))
    db.register("_se_direct", pa.table({"op_id": op_id[per_op["in_se"]]}))
    rows = stage_rows(swept.stats)
    db.from_arrow(pa.table({k: (pa.array(list(v), pa.string()) if k == "name" else v)
                            for k, v in rows.items()})).create("stages")
    db.execute("CREATE VIEW _ranges AS SELECT * FROM base_ranges")


def _int_columns(holder: list, names) -> list[np.ndarray]:
    """Columns of the pyarrow Table in holder[0] as int64 arrays; each Arrow column is let go once
    converted (at 1e7 rows every copy is ~80 MB): the holder list must hold the only reference."""
    table = holder.pop()
    columns = [table.column(name) for name in names]
    del table
    out = []
    for i, name in enumerate(names):
        if columns[i].null_count:
            raise Unsupported(f"NULLs in {name}")
        out.append(np.asarray(columns[i].to_numpy(), dtype=np.int64))
        columns[i] = None
    return out


def _read_ops(sq) -> dict[str, np.ndarray]:
    """KERNEL + MEMCPY + MEMSET columns; graphNodeId (costly to read: ~40% more) only when the
    export has a graph-launch API name, the only way GPU ops get graph nodes."""
    from dsocr_perf.analyze.nsys import _col, read_arrow

    strings = sq.table("StringIds")
    graphs = strings is not None and sq.rows(f"""SELECT count(*) FROM "{strings}"
                                                 WHERE value GLOB 'cudaGraphLaunch*' OR value GLOB 'cuGraphLaunch*'""")[0][0] > 0

    parts = []
    for kind, table in enumerate(OPS_TABLES):
        real = sq.table(table)
        if real is None:
            continue
        c = sq.columns(real)
        if any(n.lower() not in c for n in OPS_COLUMNS):
            raise Unsupported(f"{real} lacks a column")
        graph = f', "{c["graphnodeid"].name}" AS graph_node' if graphs and "graphnodeid" in c else ""
        # (device, stream) as one key computed by SQLite: one column less to move (~10% faster)
        stream_key = f'(("{c["deviceid"].name}" << 40) | "{c["streamid"].name}") AS stream_key'
        plain = ("start", "end", "correlationId", "globalPid")
        t = read_arrow(sq, lambda: f'SELECT {", ".join(_col(c, n) for n in plain)}, {stream_key}{graph} FROM "{real}"')
        if graph and t.column("graph_node").null_count < t.num_rows:
            raise Unsupported("CUDA graph nodes")
        columns = plain + ("stream_key",)
        rows, holder = t.num_rows, [t.select(list(columns))]
        del t
        parts.append(_int_columns(holder, columns) + [np.full(rows, kind, np.int8)])
    if not parts:
        return {k: np.zeros(0, np.int64) for k in ("start", "end", "correlation", "gpid", "stream_key", "kind")}
    names = ("start", "end", "correlation", "gpid", "stream_key", "kind")
    return {n: np.concatenate([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i, n in enumerate(names)}


def _read_calls(sq) -> dict[str, np.ndarray]:
    from dsocr_perf.analyze.nsys import _col, read_arrow

    runtime = sq.table("CUPTI_ACTIVITY_KIND_RUNTIME")
    names = ("correlationId", "globalTid", "start", "end")
    if runtime is None:
        return {k: np.zeros(0, np.int64) for k in ("correlation", "gtid", "start", "end", "order")}
    c = sq.columns(runtime)
    query = lambda: f'SELECT {", ".join(_col(c, n) for n in names)} FROM "{runtime}"'  # noqa: E731
    correlation, gtid, start, end = _int_columns([read_arrow(sq, query)], names)  # the holder: see _int_columns
    # sorted and indexed here, in the reader thread, while the GPU ops are still being read (that
    # core is idle otherwise): attribute() needs the ops in (thread, call start) order
    order = np.lexsort((start, gtid))
    index = CallIndex(gtid, correlation)
    return {"gtid": gtid, "start": start, "end": end, "order": order, "index": index}


def _climb(start_at: np.ndarray, parent: np.ndarray, done) -> np.ndarray:
    """Per element: follow `parent` from start_at until done(index, element positions) or -1."""
    at = start_at.copy()
    todo = np.flatnonzero(at >= 0)
    while todo.size:
        r = at[todo]
        move = ~done(r, todo)
        todo = todo[move]
        at[todo] = parent[r[move]]
        todo = todo[at[todo] >= 0]
    return at


class CallIndex:
    """The API calls by (process, correlation). Correlation ids are small counters per process: a
    direct lookup table when they stay small, else a sorted key array. Built in the calls reader's
    thread, which finishes before the GPU-op reader."""

    def __init__(self, gtid: np.ndarray, correlation: np.ndarray):
        proc = _process_of(gtid)
        _check_correlation(correlation)
        procs, rest = [], proc
        while rest.size and len(procs) <= 16:
            procs.append(rest[0])
            rest = rest[rest != rest[0]]
        n = correlation.size
        top = int(correlation.max()) if n else 0
        self.procs, self.width = procs, top + 1
        if len(procs) <= 16 and len(procs) * (top + 1) <= 4 * n + 4096:
            slot = correlation.copy()           # slot = process number * width + correlation
            for i, p in enumerate(procs[1:], 1):
                slot[proc == p] += i * self.width
            self.table = np.full(len(procs) * self.width, -1, np.int64)
            self.table[slot] = np.arange(n)
            if np.count_nonzero(self.table >= 0) != n:
                raise Unsupported("two API calls share a (process, correlation) key")
            return
        self.table = None
        key = (proc << 32) | correlation
        self.order = np.argsort(key, kind="stable")  # timsort: calls come nearly in key order
        self.sorted_keys = key[self.order]
        if n > 1 and (self.sorted_keys[1:] == self.sorted_keys[:-1]).any():
            raise Unsupported("two API calls share a (process, correlation) key")

    def lookup(self, gpid: np.ndarray, correlation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per op: the index of its call (0 where none) and whether it has one."""
        proc = _process_of(gpid)
        _check_correlation(correlation)
        if self.table is not None:
            slot = np.full(correlation.size, -1, np.int64)
            for i, p in enumerate(self.procs):
                mine = (proc == p) & (correlation < self.width)
                slot[mine] = correlation[mine] + i * self.width
            call = np.where(slot >= 0, self.table[np.maximum(slot, 0)], -1)
            return np.maximum(call, 0), call >= 0
        if not self.sorted_keys.size:
            return np.zeros(correlation.size, np.int64), np.zeros(correlation.size, bool)
        key = (proc << 32) | correlation
        pos = np.minimum(np.searchsorted(self.sorted_keys, key), self.sorted_keys.size - 1)
        return self.order[pos], self.sorted_keys[pos] == key


def _process_of(global_id: np.ndarray) -> np.ndarray:
    proc = global_id >> 24
    if proc.size and (proc.min() < 0 or proc.max() >= 1 << 30):
        raise Unsupported("process ids too wide to pack")
    return proc


def _check_correlation(correlation: np.ndarray) -> None:
    if correlation.size and (correlation.min() < 0 or correlation.max() >= 1 << 32):
        raise Unsupported("correlation ids too wide to pack")


class _InThread:
    """Run fn(*args) in a thread; result() re-raises its exception. (NumPy's big loops release the
    GIL, so two of these passes run on two cores.)"""

    def __init__(self, fn, *args):
        self._out: dict = {}
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="dsocr-sweep-pushpop")
        self._thread.start()

    def _run(self, fn, args):
        try:
            self._out["value"] = fn(*args)
        except BaseException as e:
            self._out["error"] = e

    def result(self):
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


@dataclass
class _Ops:
    """Per GPU op (arrays of n_ops) what the passes read; `order`/`sorted_key`: the ops launched on
    a thread with ranges, in (thread, call start) order, and that packed key."""
    start: np.ndarray
    end: np.ndarray
    dur: np.ndarray
    is_kernel: np.ndarray
    stream_key: np.ndarray
    thread: np.ndarray      # dense id of the launching thread among threads with ranges, -1 none
    call_end: np.ndarray
    order: np.ndarray
    sorted_key: np.ndarray


@dataclass
class _Tree:
    """Push/pop ranges in (thread, range_id) order (`pp`: their indices in `ranges` order)."""
    pp: np.ndarray
    start: np.ndarray
    end: np.ndarray
    thread: np.ndarray
    parent: np.ndarray      # index into this order, -1 at the top
    depth: np.ndarray
    key: np.ndarray         # packed (thread, start)


def attribute(ops: dict, calls: dict, ranges: dict):
    """Per range (in `ranges` order) the range_stats metrics, and per op its launching thread and
    innermost push/pop range. Raises Unsupported where the sweep's model does not hold."""
    n_ops, n_ranges = len(ops["start"]), len(ranges["range_id"])
    if not n_ranges or not n_ops or not len(calls["start"]):
        raise Unsupported("no ranges, GPU ops or API calls")

    # 1. op -> call on (process, correlation)
    index = calls.pop("index", None) or CallIndex(calls["gtid"], calls["correlation"])
    call, launched = index.lookup(ops.pop("gpid"), ops.pop("correlation"))
    del index
    op_gtid = np.where(launched, calls["gtid"][call], -1)
    cs, ce = calls["start"][call], calls["end"][call]
    # ops in their calls' (thread, start) order, when each call made at most one op
    ops_by_call = None
    if "order" in calls and np.bincount(call[launched], minlength=len(calls["start"])).max(initial=0) <= 1:
        call_to_op = np.full(len(calls["start"]), -1, np.int64)
        call_to_op[call[launched]] = np.flatnonzero(launched)
        ops_by_call = call_to_op[calls["order"]]
        ops_by_call = ops_by_call[ops_by_call >= 0]
        del call_to_op
    del call
    calls.clear()  # the calls are not needed any more: 4 x 80 MB at 1e7

    # threads with ranges -> dense ids; the ops' launching threads among them
    r_start, r_end = ranges["start_ns"], ranges["end_ns"]
    threads, r_thread = np.unique(ranges["thread"], return_inverse=True)
    r_thread = r_thread.astype(np.int64).reshape(-1)
    if threads.size >= 1 << (63 - TIME_BITS):
        raise Unsupported("too many threads")
    tpos = np.minimum(np.searchsorted(threads, op_gtid), threads.size - 1)
    op_thread = np.where(launched & (threads[tpos] == op_gtid), tpos, -1)
    op_tid = (op_gtid & 0xFFFFFF).astype(np.int64)
    del tpos, op_gtid
    has_thread = op_thread >= 0
    t0 = min(r_start.min(), cs[has_thread].min() if has_thread.any() else r_start.min())
    t1 = max(r_end.max(), ce[has_thread].max() if has_thread.any() else r_end.max())
    if t1 - t0 >= 1 << TIME_BITS:
        raise Unsupported("trace too long to pack times")

    def packed(thread, t):
        return (thread << TIME_BITS) | (t - t0)

    tree = _pushpop_tree(ranges, r_thread, packed)

    # ops in (thread, call start) order: sorted needles make searchsorted cache-friendly, and the
    # start/end pass takes a range's ops as one slice of this order
    if ops_by_call is not None:
        op_order = ops_by_call[has_thread[ops_by_call]]
        op_sorted = packed(op_thread[op_order], cs[op_order])
    else:
        k = np.flatnonzero(has_thread)
        keys = packed(op_thread[k], cs[k])
        o = np.argsort(keys, kind="stable")
        op_order, op_sorted = k[o], keys[o]
    del ops_by_call, cs
    start, end = ops["start"], ops["end"]
    o = _Ops(start=start, end=end, dur=end - start, is_kernel=ops["kind"] == 0, stream_key=ops.pop("stream_key"),
             thread=op_thread, call_end=ce, order=op_order, sorted_key=op_sorted)

    # 3-4 (push/pop ranges) in a second thread while 5 (start/end ranges) runs here
    pushpop = _InThread(_pushpop_pass, o, tree, n_ops)
    se_live = np.flatnonzero(~ranges["pushpop"] & ranges["same_thread"])
    try:
        se = _start_end_pass(o, se_live, r_thread, r_start, r_end, tree, packed, n_ops)
    finally:
        inner, pp_totals = pushpop.result()

    # all ranges, in `ranges` order
    big = np.iinfo(np.int64).max
    pp, p_parent = tree.pp, tree.parent
    parent = np.full(n_ranges, -1, np.int64)
    depth = np.zeros(n_ranges, np.int64)
    parent[pp] = np.where(p_parent >= 0, pp[np.maximum(p_parent, 0)], -1)
    depth[pp] = tree.depth
    parent[se_live], depth[se_live] = se["parent"], se["depth"]
    inclusive = np.zeros(n_ranges, np.float64)
    kernels = np.zeros(n_ranges, np.int64)
    gpu_ops = np.zeros(n_ranges, np.int64)
    r_first = np.full(n_ranges, big, np.int64)
    r_last = np.full(n_ranges, -big, np.int64)
    multi = np.zeros(n_ranges, bool)
    for rows, totals in ((pp, pp_totals), (se_live, se)):
        inclusive[rows], kernels[rows], gpu_ops[rows] = totals["inclusive"], totals["kernels"], totals["gpu_ops"]
        r_first[rows], r_last[rows] = totals["first"], totals["last"]
        multi[rows] = totals["stream_lo"] < totals["stream_hi"]
    busy = inclusive.copy()
    multi_ranges = np.flatnonzero(multi)
    if multi_ranges.size:
        busy[multi_ranges] = _union_busy(o, _ops_inside(o, multi_ranges, r_thread, r_start, r_end, packed),
                                         multi_ranges.size)

    # exclusive: the op's innermost range is a start/end range when one starts after its push/pop range
    inner_all = np.where(inner >= 0, pp[np.maximum(inner, 0)], -1)
    pp_start = np.where(inner >= 0, tree.start[np.maximum(inner, 0)], -big)
    se_wins = (se["best"] >= 0) & (se["best_start"] > pp_start)
    innermost = np.where(se_wins, se["best"], inner_all)
    ek = o.is_kernel & (innermost >= 0)
    exclusive = np.bincount(innermost[ek], weights=o.dur[ek], minlength=n_ranges)

    # instances inside an instance of the same name count their kernels once (per name)
    name_id = ranges["name_id"]
    self_nested = np.zeros(n_ranges, bool)
    anc = parent.copy()
    while (anc >= 0).any():
        live = anc >= 0
        self_nested |= live & (name_id[np.maximum(anc, 0)] == name_id)
        anc = np.where(live, parent[np.maximum(anc, 0)], -1)

    has_ops = gpu_ops > 0
    stats = {
        "range_id": ranges["range_id"], "name_id": name_id, "names": ranges["names"], "depth": depth,
        "cpu_ns": r_end - r_start,
        "inclusive_ns": np.rint(inclusive).astype(np.int64), "exclusive_ns": np.rint(exclusive).astype(np.int64),
        "busy_ns": np.rint(busy).astype(np.int64),
        "span_ns": np.where(has_ops, r_last - r_first, 0), "kernels": kernels, "gpu_ops": gpu_ops,
        "launches": gpu_ops, "outermost_of_name": ~self_nested,
    }
    per_op = {"launched": launched, "tid": op_tid,
              "pp_range": np.where(inner >= 0, ranges["range_id"][pp[np.maximum(inner, 0)]], 0),
              "has_pp": inner >= 0, "in_se": se["in_se"]}
    return stats, per_op


def _pushpop_tree(ranges: dict, r_thread: np.ndarray, packed) -> _Tree:
    """2. A range's parent is found by climbing from the range just before it (same thread, by
    range_id) until one is still open at its start."""
    pp = np.flatnonzero(ranges["pushpop"])
    pp = pp[np.lexsort((ranges["range_id"][pp], r_thread[pp]))]
    p_start, p_end, p_thread = ranges["start_ns"][pp], ranges["end_ns"][pp], r_thread[pp]
    n_pp = pp.size
    p_parent = np.arange(n_pp) - 1
    if n_pp:
        p_parent[np.r_[True, p_thread[1:] != p_thread[:-1]]] = -1

    def open_at_start(r, i):  # candidate parent r still open when range i starts (stack order ties)
        return (p_end[r] > p_start[i]) | ((p_start[r] == p_end[r]) & (p_end[r] == p_start[i]))

    # climb through candidates already resolved (or partly): everything skipped closed before
    todo = np.flatnonzero(p_parent >= 0)
    while todo.size:
        r = p_parent[todo]
        closed = ~open_at_start(r, todo)
        todo = todo[closed]
        p_parent[todo] = p_parent[r[closed]]
        todo = todo[p_parent[todo] >= 0]
    has_parent = p_parent >= 0
    q = p_parent[has_parent]
    if ((p_start[q] > p_start[has_parent]) | (p_end[q] < p_end[has_parent])).any():
        raise Unsupported("push/pop ranges do not nest")
    p_depth = np.zeros(n_pp, np.int64)
    for _ in range(n_pp + 1):
        new = np.where(has_parent, p_depth[np.maximum(p_parent, 0)] + 1, 0)
        if (new == p_depth).all():
            break
        p_depth = new
    return _Tree(pp=pp, start=p_start, end=p_end, thread=p_thread, parent=p_parent, depth=p_depth,
                 key=packed(p_thread, p_start))


def _innermost(tree: _Tree, thread: np.ndarray, key: np.ndarray, t_end: np.ndarray) -> np.ndarray:
    """Per item (packed `key` = (thread, t), fastest sorted): the innermost push/pop range of its
    thread that encloses [t, t_end], as an index into the tree, -1 none."""
    cand = np.searchsorted(tree.key, key, side="right") - 1
    cand[(cand >= 0) & (tree.thread[np.maximum(cand, 0)] != thread)] = -1
    return _climb(cand, tree.parent, lambda r, i: tree.end[r] >= t_end[i])


def _pushpop_pass(o: _Ops, tree: _Tree, n_ops: int):
    """3-4. Each op's innermost push/pop range, and per push/pop range its ops' totals, rolled up
    to every ancestor by depth (deepest level first)."""
    n_pp = tree.pp.size
    inner = np.full(n_ops, -1, np.int64)
    if n_pp and o.order.size:
        inner[o.order] = _innermost(tree, o.thread[o.order], o.sorted_key, o.call_end[o.order])
    big = np.iinfo(np.int64).max
    a = inner >= 0
    ak = a & o.is_kernel
    totals = {"inclusive": np.bincount(inner[ak], weights=o.dur[ak], minlength=n_pp),
              "kernels": np.bincount(inner[ak], minlength=n_pp).astype(np.int64),
              "gpu_ops": np.bincount(inner[a], minlength=n_pp).astype(np.int64),
              "first": np.full(n_pp, big, np.int64), "last": np.full(n_pp, -big, np.int64),
              "stream_lo": np.full(n_pp, big, np.int64), "stream_hi": np.full(n_pp, -big, np.int64)}
    np.minimum.at(totals["first"], inner[a], o.start[a])
    np.maximum.at(totals["last"], inner[a], o.end[a])
    np.minimum.at(totals["stream_lo"], inner[ak], o.stream_key[ak])
    np.maximum.at(totals["stream_hi"], inner[ak], o.stream_key[ak])
    add = {"inclusive": np.add, "kernels": np.add, "gpu_ops": np.add, "first": np.minimum, "last": np.maximum,
           "stream_lo": np.minimum, "stream_hi": np.maximum}
    for level in range(int(tree.depth.max()) if n_pp else 0, 0, -1):
        sel = np.flatnonzero(tree.depth == level)
        up = tree.parent[sel]
        for name, ufunc in add.items():
            ufunc.at(totals[name], up, totals[name][sel])
    return inner, totals


def _ops_inside(o: _Ops, rs: np.ndarray, r_thread, r_start, r_end, packed) -> tuple[np.ndarray, np.ndarray]:
    """(position in rs, op) for every op launched inside range rs[i] on its thread: a slice of the
    ops in (thread, call start) order, less calls that end after the range."""
    lo = np.searchsorted(o.sorted_key, packed(r_thread[rs], r_start[rs]), side="left")
    hi = np.searchsorted(o.sorted_key, packed(r_thread[rs], r_end[rs]), side="right")
    counts = hi - lo
    group = np.repeat(np.arange(rs.size), counts)
    offset = np.repeat(lo - np.cumsum(counts) + counts, counts)
    ids = o.order[np.arange(group.size) + offset]
    keep = o.call_end[ids] <= r_end[rs][group]
    return group[keep], ids[keep]


def _start_end_pass(o: _Ops, se_live, r_thread, r_start, r_end, tree: _Tree, packed, n_ops: int) -> dict:
    """5. Start/end ranges (few; NVIDIA attributes those ended on their own thread): their ops, their
    place in the tree (under the tightest push/pop range containing them), and per op the
    latest-starting start/end range containing it."""
    n_se, big = se_live.size, np.iinfo(np.int64).max
    out = {"parent": np.full(n_se, -1, np.int64), "depth": np.zeros(n_se, np.int64),
           "best": np.full(n_ops, -1, np.int64), "best_start": np.full(n_ops, -big, np.int64),
           "in_se": np.zeros(n_ops, bool),
           "inclusive": np.zeros(n_se), "kernels": np.zeros(n_se, np.int64), "gpu_ops": np.zeros(n_se, np.int64),
           "first": np.full(n_se, big, np.int64), "last": np.full(n_se, -big, np.int64),
           "stream_lo": np.full(n_se, big, np.int64), "stream_hi": np.full(n_se, -big, np.int64)}
    if not n_se:
        return out
    if tree.pp.size:
        key = packed(r_thread[se_live], r_start[se_live])
        holder = _innermost(tree, r_thread[se_live], key, r_end[se_live])
        out["parent"] = np.where(holder >= 0, tree.pp[np.maximum(holder, 0)], -1)
        out["depth"] = np.where(holder >= 0, tree.depth[np.maximum(holder, 0)] + 1, 0)
    g, ids = _ops_inside(o, se_live, r_thread, r_start, r_end, packed)
    r = se_live[g]
    out["in_se"][ids] = True
    np.maximum.at(out["best_start"], ids, r_start[r])
    latest = r_start[r] == out["best_start"][ids]
    out["best"][ids[latest]] = r[latest]
    kg = o.is_kernel[ids]
    out["inclusive"] = np.bincount(g[kg], weights=o.dur[ids[kg]], minlength=n_se)
    out["kernels"] = np.bincount(g[kg], minlength=n_se)
    out["gpu_ops"] = np.bincount(g, minlength=n_se)
    np.minimum.at(out["first"], g, o.start[ids])
    np.maximum.at(out["last"], g, o.end[ids])
    np.minimum.at(out["stream_lo"], g[kg], o.stream_key[ids[kg]])
    np.maximum.at(out["stream_hi"], g[kg], o.stream_key[ids[kg]])
    return out


def _union_busy(o: _Ops, inside: tuple[np.ndarray, np.ndarray], n_groups: int) -> np.ndarray:
    """Per group, the length of the union of its kernels' intervals: sorted by start, each kernel
    adds what reaches past the furthest end before it in the same group."""
    g, ids = inside
    kg = o.is_kernel[ids]
    g, ids = g[kg], ids[kg]
    s, e = o.start[ids], o.end[ids]
    order = np.lexsort((e, s, g))
    g, s, e = g[order], s[order], e[order]
    # per-group running max in one accumulate: shift each group above the previous one
    first_in_group = np.r_[True, g[1:] != g[:-1]]
    group_start = np.maximum.accumulate(np.where(first_in_group, np.arange(g.size), 0))
    v = e - s[group_start]  # >= 0: s is sorted within a group
    width = np.zeros(n_groups, np.int64)
    np.maximum.at(width, g, v + 1)
    shift = np.cumsum(width) - width
    reach = np.maximum.accumulate(v + shift[g]) - shift[g] + s[group_start]
    prev = np.where(first_in_group, s, np.r_[s[:1], reach[:-1]])
    return np.bincount(g, weights=np.maximum(0, e - np.maximum(s, prev)), minlength=n_groups)


def stage_rows(stats: dict) -> dict[str, np.ndarray]:
    """range_stats grouped by name, as the `stages` view: columns in order of first appearance."""
    name_id, n_names = stats["name_id"], len(stats["names"])

    def total(values, where=None):
        ids, w = (name_id, values) if where is None else (name_id[where], values[where])
        return np.rint(np.bincount(ids, weights=w, minlength=n_names)).astype(np.int64)

    first_id = np.full(n_names, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first_id, name_id, stats["range_id"])
    depth = np.full(n_names, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(depth, name_id, stats["depth"])
    out = {"name": np.asarray(stats["names"], dtype=object),
           "instances": np.bincount(name_id, minlength=n_names).astype(np.int64)}
    for metric in ("inclusive_ns", "exclusive_ns", "busy_ns", "span_ns", "cpu_ns"):
        out[metric] = total(stats[metric])
    out["kernels"] = total(stats["kernels"], stats["outermost_of_name"])
    out["gpu_ops"] = total(stats["gpu_ops"])
    out["launches"] = total(stats["launches"])
    out["depth"] = depth.astype(np.int32)
    out["first_range_id"] = first_id
    seen = out["instances"] > 0
    order = np.argsort(first_id[seen])
    return {k: v[seen][order] for k, v in out.items()}
