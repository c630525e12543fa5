"""Wall-time accounting: for every range, where its wall time went while its GPU work was not running.

Per range instance (wall = the range's own duration on its host thread):
    busy_ns   union of the intervals of the kernels it launched (analyze.attribute)
    idle_ns   max(0, wall - busy): the wall time its own kernels did not fill
    idle_causes_ns, splitting idle_ns by what was happening instead:
        gpu_other  the GPU ran work launched before or elsewhere (busy, but not with this range's work)
        sync       the GPU was idle and the range's thread waited in a synchronising call
        memcpy     ... was in a memory copy call (a blocking device-to-host copy waits here)
        launch     ... was inside a launch call (kernels, memsets, CUDA-graph launches)
        other_api  ... was in another CUDA runtime or driver call
        host       ... was outside CUDA: the CPU's own work (Python, the framework, the page's preprocessing)
The GPU is idle when no operation of the range's process runs on any of its GPUs. The causes are
measured over the range's window; when its own kernels outlive the window (an asynchronous tail),
wall - busy is smaller than what was measured, and the causes are scaled to sum to idle_ns exactly.

How, in one pass over the calls: each call's overlap with the process's GPU-idle intervals is charged
to the call's innermost range on its thread and rolled up the range trees like kernel time; the idle
time inside a range is a difference of prefix sums over the idle intervals.

Counts per range: api_calls, kernel_launches (calls that launched kernels, one per CUDA-graph launch),
host_syncs (calls NVIDIA recorded in CUPTI_ACTIVITY_KIND_SYNCHRONIZATION: stream, event, context
synchronise; by name for traces without that table), memcpy by direction, memsets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsocr_perf.analyze import attribute as A
from dsocr_perf.analyze.keys import accumulate, dense_index, index_in, spans
from dsocr_perf.analyze.read.raw import KERNEL, MEMCPY, MEMCPY_DIRECTIONS, MEMSET, Raw

CALL_KINDS = ("launch", "sync", "memcpy", "memset", "other")
LAUNCH, SYNC, COPY, SET, OTHER = range(5)
CAUSES = ("gpu_other", "sync", "memcpy", "launch", "other_api", "host")
DIRECTIONS = ("HtoD", "DtoH", "DtoD", "HtoH", "PtoP", "other")

# By name, for traces that carry no synchronisation records (PyTorch profiler traces).
SYNC_NAMES = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaThreadSynchronize",
              "cuCtxSynchronize", "cuStreamSynchronize", "cuEventSynchronize")
MEMCPY_PREFIXES = ("cudaMemcpy", "cuMemcpy")
MEMSET_PREFIXES = ("cudaMemset", "cuMemset", "cuMemsetD")


@dataclass
class CallFacts:
    kind: np.ndarray          # int8 per call: CALL_KINDS index
    direction: np.ndarray     # int8 per call: DIRECTIONS index for memcpy calls, -1 otherwise
    gpu_ops: np.ndarray       # per call: GPU operations it launched
    inner: np.ndarray         # per call: innermost range on its thread, -1
    idle_ns: np.ndarray       # per call: its overlap with its process's GPU-idle time
    gpu_busy_ns: int          # union of all GPU operations, per process, summed


@dataclass
class IdleTime:
    """When the GPUs of each process run nothing (raw tables only: computed beside the attribution)."""
    per_call: np.ndarray      # per API call: its overlap with its process's GPU-idle time
    per_range: np.ndarray     # per range: the GPU-idle time of its process inside its window
    busy_ns: int              # union of all GPU operations, per process, summed


def idle_time(raw: Raw) -> IdleTime:
    calls, ranges = raw.calls, raw.nvtx.ranges
    idle = GpuIdle(raw.ops)
    per_call = np.empty(len(calls), np.int64)
    for sl in spans(len(calls)):
        per_call[sl] = idle.overlap(calls.process[sl], calls.start[sl], calls.end[sl])
    per_range = idle.overlap(raw.nvtx.process, ranges.column("start_ns").to_numpy(),
                             ranges.column("end_ns").to_numpy())
    return IdleTime(per_call=per_call, per_range=per_range, busy_ns=idle.busy_ns())


def call_facts(raw: Raw, att: A.Attribution, idle: IdleTime | None = None) -> tuple[CallFacts, dict]:
    """Per-call kind, direction, innermost range and GPU-idle overlap; and per range the counts and
    the per-cause idle time of the calls inside it (rolled up)."""
    ops, calls = raw.ops, raw.calls
    n_calls, n_ranges = len(calls), att.ranges.start.size
    gpu_ops = att.calls_ops.counts
    kind = _call_kinds(raw, att)
    direction = np.full(n_calls, -1, np.int8)
    copies = np.flatnonzero((ops.kind == MEMCPY) & (att.op_call >= 0))
    if copies.size:
        table = np.full(256, DIRECTIONS.index("other"), np.int8)
        for copy_kind, name in MEMCPY_DIRECTIONS.items():
            table[copy_kind] = DIRECTIONS.index(name)
        direction[att.op_call[copies]] = table[np.maximum(ops.copy_kind[copies], 0).astype(np.int64)]
    direction[(kind == COPY) & (direction < 0)] = DIRECTIONS.index("other")

    idle = idle_time(raw) if idle is None else idle
    idle_ns = idle.per_call

    # per range: the calls inside it, by kind, at each call's innermost range per lane (from the
    # engine), rolled up the trees; start/end ranges take their calls as one slice each
    lanes, order = att.lanes, att.calls
    per_range = {name: np.zeros(n_ranges, np.int64) for name in COUNTS}
    if order.lane_at:
        per_pp = _Counts(len(lanes.pp))
        for sl in spans(n_calls):
            for per_call in order.lane_at:
                at = per_call[sl]
                mine = np.flatnonzero(at >= 0)
                ids = mine + sl.start
                per_pp.add(at[mine], kind[ids], direction[ids], idle_ns[ids])
        for name, values in per_pp.columns().items():
            for level in range(int(lanes.depth.max(initial=0)), 0, -1):
                sel = np.flatnonzero(lanes.depth == level)
                np.add.at(values, lanes.parent[sel], values[sel])
            per_range[name][lanes.pp] = values
    se = order.startend
    if se.size:
        per_se = _Counts(se.size)
        for g, ids in order.inside(se, att.ranges, calls.end, lanes.t0):
            per_se.add(g, kind[ids], direction[ids], idle_ns[ids])
        for name, values in per_se.columns().items():
            per_range[name][se] = values

    facts = CallFacts(kind=kind, direction=direction, gpu_ops=gpu_ops, inner=order.inner, idle_ns=idle_ns,
                      gpu_busy_ns=idle.busy_ns)
    return facts, _range_accounting(att, per_range, idle.per_range)


def _call_kinds(raw: Raw, att: A.Attribution) -> np.ndarray:
    """One kind per call: memcpy > memset > sync > launch > other (a blocking copy is a copy)."""
    ops, calls = raw.ops, raw.calls
    n = len(calls)
    names = calls.names
    by_name = np.full(len(names) + 1, OTHER, np.int8)   # last slot: unknown name (-1)
    for i, name in enumerate(names):
        if name.startswith(MEMCPY_PREFIXES):
            by_name[i] = COPY
        elif name.startswith(MEMSET_PREFIXES):
            by_name[i] = SET
        elif raw.source == "kineto" and name in SYNC_NAMES:
            by_name[i] = SYNC
    kind = by_name[calls.name_id]
    op_call = att.op_call
    launches = np.compress((ops.kind == KERNEL) & (op_call >= 0), op_call)
    kind[launches[kind[launches] == OTHER]] = LAUNCH
    if raw.sync_keys.size and n:
        key = calls.process << 32
        key |= calls.correlation & 0xFFFFFFFF
        at = np.minimum(np.searchsorted(raw.sync_keys, key), raw.sync_keys.size - 1)
        is_sync = raw.sync_keys[at] == key
        kind[is_sync & (kind != COPY) & (kind != SET)] = SYNC
    for op_kind, call_kind in ((MEMCPY, COPY), (MEMSET, SET)):
        made = op_call[(ops.kind == op_kind) & (op_call >= 0)]
        kind[made] = call_kind
    return kind


class GpuIdle:
    """Per process, the intervals in which none of its GPU operations runs, with prefix sums."""

    def __init__(self, ops):
        self.procs, proc = dense_index(ops.process)
        self.gaps = []
        for p in range(self.procs.size):
            mine = np.flatnonzero(proc == p) if self.procs.size > 1 else None
            s, e = (ops.start, ops.end) if mine is None else (ops.start[mine], ops.end[mine])
            if not (s[1:] >= s[:-1]).all():
                order = np.argsort(s, kind="stable")
                s, e = s[order], e[order]
            reach = np.maximum.accumulate(e)
            gap = np.flatnonzero(s[1:] > reach[:-1])
            starts = np.r_[-A.BIG // 2, reach[gap]]            # idle before the first op, and between ops
            ends = np.r_[s[0], s[gap + 1]]
            starts, ends = np.r_[starts, reach[-1]], np.r_[ends, A.BIG // 2]   # and after the last
            cum = np.r_[0, np.cumsum(ends - starts)]
            self.gaps.append((starts, ends, cum))

    def busy_ns(self) -> int:
        """Time in which at least one GPU op of the process runs, summed over processes."""
        total = 0
        for starts, ends, cum in self.gaps:
            inner = cum[-2] - cum[1] if cum.size > 3 else 0        # gaps between the first and the last op
            total += int(starts[-1] - ends[0] - inner)
        return total

    def cumulative(self, p: int, t: np.ndarray) -> np.ndarray:
        """Idle time of process p (by index into procs) in (-inf, t]."""
        starts, ends, cum = self.gaps[p]
        k = np.searchsorted(starts, t, side="right") - 1
        k = np.maximum(k, 0)
        return cum[k] + np.clip(t - starts[k], 0, ends[k] - starts[k])

    def overlap(self, process: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Per interval: the idle time of its process inside it (no GPU op of the process: all idle)."""
        out = end - start
        if not self.procs.size:
            return out
        pos = index_in(process, self.procs)
        for i in range(self.procs.size):
            if self.procs.size == 1 and (pos == 0).all():
                out = self.cumulative(i, end) - self.cumulative(i, start)
                break
            mine = np.flatnonzero(pos == i)
            if mine.size:
                out[mine] = self.cumulative(i, end[mine]) - self.cumulative(i, start[mine])
        return out


COUNTS = tuple(f"{k}_calls" for k in CALL_KINDS) + tuple(f"idle_{k}" for k in CALL_KINDS) + \
    tuple(f"memcpy_{d}" for d in DIRECTIONS)


class _Counts:
    """Per group, the COUNTS columns: calls and their GPU-idle ns by kind, memcpy calls by direction;
    summed chunk by chunk."""

    def __init__(self, n: int):
        self.n = n
        self.calls = np.zeros(n * len(CALL_KINDS), np.int64)
        self.idle = np.zeros(n * len(CALL_KINDS), np.float64)
        self.copies = np.zeros(n * len(DIRECTIONS), np.int64)

    def add(self, group: np.ndarray, kind: np.ndarray, direction: np.ndarray, idle_ns: np.ndarray) -> None:
        key = group.astype(np.int64) * len(CALL_KINDS)
        key += kind
        accumulate(self.calls, key)
        accumulate(self.idle, key, idle_ns)
        copies = np.flatnonzero(direction >= 0)
        accumulate(self.copies, group[copies].astype(np.int64) * len(DIRECTIONS) + direction[copies])

    def columns(self) -> dict[str, np.ndarray]:
        """The COUNTS columns, one array each."""
        k, d = len(CALL_KINDS), len(DIRECTIONS)
        calls, idle = self.calls.reshape(self.n, k), np.rint(self.idle).astype(np.int64).reshape(self.n, k)
        copies = self.copies.reshape(self.n, d)
        return {**{f"{name}_calls": calls[:, i] for i, name in enumerate(CALL_KINDS)},
                **{f"idle_{name}": idle[:, i] for i, name in enumerate(CALL_KINDS)},
                **{f"memcpy_{name}": copies[:, i] for i, name in enumerate(DIRECTIONS)}}


def _range_accounting(att: A.Attribution, c: dict, window_idle: np.ndarray) -> dict:
    """Per range: wall, idle and its causes, and the call counts (the range_stats columns)."""
    wall = att.stats["cpu_ns"]
    busy = att.stats["busy_ns"]
    idle = np.maximum(0, wall - busy)
    api = {"sync": c["idle_sync"], "memcpy": c["idle_memcpy"], "launch": c["idle_launch"] + c["idle_memset"],
           "other_api": c["idle_other"]}
    api_total = sum(api.values())
    causes = {"gpu_other": np.maximum(0, wall - window_idle - busy), **api,
              "host": np.maximum(0, window_idle - api_total)}
    measured = sum(causes.values())
    scale = np.where(measured > 0, idle / np.maximum(measured, 1), 0.0)
    scaled = {k: np.rint(v * scale).astype(np.int64) for k, v in causes.items()}
    # rounding: the largest cause takes the remainder, so the causes sum to idle_ns exactly
    stacked = np.stack([scaled[k] for k in CAUSES])
    top, largest = np.zeros(idle.size, np.int64), stacked[0].copy()
    for i in range(1, len(CAUSES)):                # np.argmax(stacked, axis=0), without its strided walk
        larger = stacked[i] > largest
        top[larger] = i
        np.maximum(largest, stacked[i], out=largest)
    stacked[top, np.arange(idle.size)] += idle - stacked.sum(axis=0)
    out = {"wall_ns": wall, "idle_ns": idle, "gpu_idle_ns": np.minimum(window_idle, wall)}
    out.update({f"idle_{k}_ns": stacked[i] for i, k in enumerate(CAUSES)})
    out.update({"api_calls": sum(c[f"{k}_calls"] for k in CALL_KINDS), "kernel_launches": c["launch_calls"],
                "host_syncs": c["sync_calls"], "memsets": c["memset_calls"],
                "memcpy_calls": c["memcpy_calls"]})
    out.update({f"memcpy_{d}": c[f"memcpy_{d}"] for d in DIRECTIONS})
    return out
