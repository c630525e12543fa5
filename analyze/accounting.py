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


def call_facts(raw: Raw, att: A.Attribution) -> tuple[CallFacts, dict]:
    """Per-call kind, direction, innermost range and GPU-idle overlap; and per range the counts and
    the per-cause idle time of the calls inside it (rolled up)."""
    ops, calls = raw.ops, raw.calls
    n_calls, n_ranges = len(calls), att.ranges.start.size
    launched = att.op_call >= 0
    gpu_ops = np.bincount(att.op_call[launched], minlength=n_calls).astype(np.int64) if n_calls else np.zeros(0, np.int64)
    kind = _call_kinds(raw, att, launched)
    direction = np.full(n_calls, -1, np.int8)
    copies = launched & (ops.kind == MEMCPY)
    if copies.any():
        table = np.full(256, DIRECTIONS.index("other"), np.int8)
        for copy_kind, name in MEMCPY_DIRECTIONS.items():
            table[copy_kind] = DIRECTIONS.index(name)
        direction[att.op_call[copies]] = table[np.maximum(ops.copy_kind[copies], 0).astype(np.int64)]
    direction[(kind == COPY) & (direction < 0)] = DIRECTIONS.index("other")

    idle = GpuIdle(ops)
    idle_ns = idle.overlap(calls.process, calls.start, calls.end)

    # per range: the calls inside it, by kind, at each call's innermost range per lane (from the
    # engine), rolled up the trees; start/end ranges take their calls as one slice each
    lanes, order = att.lanes, att.calls
    per_range = _empty_counts(n_ranges)
    groups, members = [], []
    for per_call in order.lane_at:
        ids = np.flatnonzero(per_call >= 0)
        groups.append(per_call[ids])
        members.append(ids)
    if groups:
        t = _call_totals(len(lanes.pp), np.concatenate(groups), np.concatenate(members), kind, direction, idle_ns)
        _roll_up_counts(t, lanes)
        _store(per_range, lanes.pp, t)
    se = order.startend
    if se.size:
        r = att.ranges
        g, ids = A.calls_inside(order.order, order.sorted_key, calls.end, se, r.thread, r.start, r.end, lanes.t0)
        _store(per_range, se, _call_totals(se.size, g, ids, kind, direction, idle_ns))
    inner = order.inner

    window_idle = idle.overlap(raw.nvtx.process, att.ranges.start, att.ranges.end)
    facts = CallFacts(kind=kind, direction=direction, gpu_ops=gpu_ops, inner=inner, idle_ns=idle_ns,
                      gpu_busy_ns=idle.busy_ns())
    return facts, _range_accounting(att, per_range, window_idle)


def _call_kinds(raw: Raw, att: A.Attribution, launched: np.ndarray) -> np.ndarray:
    """One kind per call: memcpy > memset > sync > launch > other (a blocking copy is a copy)."""
    ops, calls = raw.ops, raw.calls
    n = len(calls)
    kind = np.full(n, OTHER, np.int8)
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
    launches = att.op_call[launched & (ops.kind == KERNEL)]
    kind[launches[kind[launches] == OTHER]] = LAUNCH
    if raw.sync_keys.size and n:
        key = (calls.process << 32) | (calls.correlation & 0xFFFFFFFF)
        is_sync = np.isin(key, raw.sync_keys)
        kind[is_sync & (kind != COPY) & (kind != SET)] = SYNC
    for op_kind, call_kind in ((MEMCPY, COPY), (MEMSET, SET)):
        made = att.op_call[launched & (ops.kind == op_kind)]
        kind[made] = call_kind
    return kind


class GpuIdle:
    """Per process, the intervals in which none of its GPU operations runs, with prefix sums."""

    def __init__(self, ops):
        self.procs = np.unique(ops.process) if len(ops) else np.zeros(0, np.int64)
        self.gaps = []
        for p in self.procs:
            mine = np.flatnonzero(ops.process == p)
            s, e = ops.start[mine], ops.end[mine]
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
        pos = np.minimum(np.searchsorted(self.procs, process), self.procs.size - 1)
        known = self.procs[pos] == process
        for i in range(self.procs.size):
            mine = np.flatnonzero(known & (pos == i))
            if mine.size:
                out[mine] = self.cumulative(i, end[mine]) - self.cumulative(i, start[mine])
        return out


def _empty_counts(n: int) -> dict:
    out = {f"{k}_calls": np.zeros(n, np.int64) for k in CALL_KINDS}
    out.update({f"memcpy_{d}": np.zeros(n, np.int64) for d in DIRECTIONS})
    out.update({f"idle_{k}": np.zeros(n, np.int64) for k in CALL_KINDS})
    return out


def _call_totals(n: int, group: np.ndarray, ids: np.ndarray, kind, direction, idle_ns) -> dict:
    out = {}
    k = kind[ids]
    for i, name in enumerate(CALL_KINDS):
        sel = k == i
        out[f"{name}_calls"] = np.bincount(group[sel], minlength=n).astype(np.int64)
        out[f"idle_{name}"] = np.rint(np.bincount(group[sel], weights=idle_ns[ids[sel]], minlength=n)).astype(np.int64)
    d = direction[ids]
    for i, name in enumerate(DIRECTIONS):
        out[f"memcpy_{name}"] = np.bincount(group[d == i], minlength=n).astype(np.int64)
    return out


def _roll_up_counts(t: dict, lanes: A.Lanes) -> None:
    for level in range(int(lanes.depth.max(initial=0)), 0, -1):
        sel = np.flatnonzero(lanes.depth == level)
        up = lanes.parent[sel]
        for values in t.values():
            np.add.at(values, up, values[sel])


def _store(per_range: dict, rows: np.ndarray, t: dict) -> None:
    for name, values in t.items():
        per_range[name][rows] = values


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
    top = np.argmax(stacked, axis=0)
    stacked[top, np.arange(idle.size)] += idle - stacked.sum(axis=0)
    out = {"wall_ns": wall, "idle_ns": idle, "gpu_idle_ns": np.minimum(window_idle, wall)}
    out.update({f"idle_{k}_ns": stacked[i] for i, k in enumerate(CAUSES)})
    out.update({"api_calls": sum(c[f"{k}_calls"] for k in CALL_KINDS), "kernel_launches": c["launch_calls"],
                "host_syncs": c["sync_calls"], "memsets": c["memset_calls"],
                "memcpy_calls": c["memcpy_calls"]})
    out.update({f"memcpy_{d}": c[f"memcpy_{d}"] for d in DIRECTIONS})
    return out
