"""The one attribution engine: every GPU operation to the ranges that contain its launch, in NumPy.

Semantics (NVIDIA's, as `nsys stats` computes them): an op belongs to the API call with the same
correlation id in the same process; a range contains the op when that call lies inside the range
on the same thread (range.start <= call.start and call.end <= range.end), whenever the op runs.
Start/end ranges that end on another thread are listed but contain nothing. Per range: inclusive
kernel time (every enclosing range counts it), exclusive (only the op's tightest range), busy
(union of its kernels' intervals), span (first op start to last op end), op and launch counts.

How, without a join over the big tables:
1. op -> call by a lookup on (process, correlation) (`CallIndex`). Two calls with one key is a
   damaged trace: the first call keeps the key, and a warning counts the others.
2. Push/pop ranges nest per thread: each thread's ranges form a tree ("lane"), parents found by
   climbing from the previous range. Ranges of different NVTX domains may interleave on one thread;
   then that thread gets one lane per domain. A lane that still does not nest is left out (warned).
3. Each op's innermost range in each lane of its thread: `searchsorted` of the packed key
   (lane << 46 | call start) in the lane's ranges, climbed until the range outlasts the call.
4. Per range totals at the innermost ranges, rolled up to every ancestor level by level.
5. Start/end ranges (few): the ops of their thread launched between their start and end are one
   slice of the ops sorted by (thread, call start).
6. Busy = inclusive kernel time for a range whose kernels ran on one stream that never overlaps
   itself; else the exact union of its kernels' intervals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsocr_perf.analyze.read.raw import KERNEL, Raw

TIME_BITS = 46      # packed (lane << 46 | time - t0): ~19.5 h of trace, 2**17 lanes
MAX_DEPTH = 255     # push/pop nesting a trace may have (real ones: ~10; passes over levels cost depth x ranges)
BIG = np.iinfo(np.int64).max


@dataclass
class Ranges:
    """The NVTX ranges in range_id order with their place in the trees."""
    start: np.ndarray
    end: np.ndarray
    thread: np.ndarray        # dense thread index, -1 when the range has no thread
    pushpop: np.ndarray       # bool
    live: np.ndarray          # bool: takes part in attribution
    parent: np.ndarray        # range index, -1
    depth: np.ndarray
    name_id: np.ndarray
    names: list[str]


@dataclass
class Attribution:
    ranges: Ranges
    threads: np.ndarray       # dense thread index -> thread key of the trace
    op_call: np.ndarray       # per op: call index, -1 none
    op_thread: np.ndarray     # per op: dense thread index, -1 (no call, or a thread without ranges)
    op_inner: np.ndarray      # per op: tightest enclosing range, -1
    op_lane_inner: list       # per lane rank: (ops, innermost range) of ops with a range in that lane
    op_startend: object       # () -> (ops, ranges) pairs of start/end containment
    stats: dict               # per range: inclusive_ns, exclusive_ns, busy_ns, span_ns, first_ns, last_ns,
                              #   kernels, gpu_ops, launches, cpu_ns, outermost_of_name
    lanes: object             # the lane trees (for the accounting of API calls)
    warnings: list


# ------------------------------------------------------------------------------------- op -> call

class CallIndex:
    """Calls by (process, correlation). Correlation ids are small counters per process: a direct
    table when they stay small, else sorted keys."""

    def __init__(self, process: np.ndarray, correlation: np.ndarray):
        self.procs = np.unique(process)
        proc = np.searchsorted(self.procs, process)
        n = correlation.size
        self.duplicates = 0
        top = int(correlation.max()) + 1 if n else 1
        usable = correlation >= 0
        if self.procs.size * top <= 4 * n + 4096:
            self.width = top
            slot = proc * top + correlation
            table = np.full(self.procs.size * top, -1, np.int64)
            calls = np.flatnonzero(usable)[::-1]      # reversed: the FIRST call of a key is written last
            table[slot[calls]] = calls
            self.duplicates = int(usable.sum() - np.count_nonzero(table >= 0))
            self.table = table
            return
        self.table = None
        key = (proc.astype(np.int64) << 32) | (correlation & 0xFFFFFFFF)
        key = np.where(usable, key, -1)
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]] & (sorted_keys >= 0)
        self.duplicates = int(((sorted_keys >= 0) & ~first).sum())
        self.order, self.sorted_keys = order[first], sorted_keys[first]

    def lookup(self, process: np.ndarray, correlation: np.ndarray) -> np.ndarray:
        """Per op: the index of its call, -1 where it has none."""
        pos = np.minimum(np.searchsorted(self.procs, process), max(self.procs.size - 1, 0))
        known = (self.procs.size > 0) & (correlation >= 0)
        known &= self.procs[pos] == process if self.procs.size else False
        if self.table is not None:
            inside = known & (correlation < self.width)
            slot = np.where(inside, pos * self.width + correlation, 0)
            return np.where(inside, self.table[slot] if self.table.size else -1, -1)
        key = (pos.astype(np.int64) << 32) | (correlation & 0xFFFFFFFF)
        if not self.sorted_keys.size:
            return np.full(correlation.size, -1, np.int64)
        at = np.minimum(np.searchsorted(self.sorted_keys, key), self.sorted_keys.size - 1)
        return np.where(known & (self.sorted_keys[at] == key), self.order[at], -1)


# ------------------------------------------------------------------------------------------- lanes

@dataclass
class Lanes:
    """Push/pop ranges grouped in nesting trees: `pp` (range indexes) sorted by (lane, range_id)."""
    pp: np.ndarray
    lane: np.ndarray          # per pp entry
    parent: np.ndarray        # index into pp, -1
    depth: np.ndarray
    key: np.ndarray           # packed (lane, start)
    start: np.ndarray
    end: np.ndarray
    thread_lanes: np.ndarray  # per dense thread: [first lane, number of lanes]
    t0: int


def _tree(order_start, order_end, lane) -> tuple[np.ndarray, np.ndarray]:
    """Parents (index into the sorted entries, -1) and, per entry, whether its parent fails to
    contain it; entries sorted by (lane, start, end descending)."""
    n = order_start.size
    parent = np.arange(n) - 1
    if n:
        parent[np.r_[True, lane[1:] != lane[:-1]]] = -1

    def open_at(r, i):  # candidate r still open when entry i starts (equal times: stack order)
        return (order_end[r] > order_start[i]) | ((order_start[r] == order_end[r]) & (order_end[r] == order_start[i]))

    todo = np.flatnonzero(parent >= 0)
    while todo.size:
        r = parent[todo]
        closed = ~open_at(r, todo)
        todo = todo[closed]
        parent[todo] = parent[r[closed]]
        todo = todo[parent[todo] >= 0]
    has = parent >= 0
    q = np.maximum(parent, 0)
    crossing = has & ((order_start[q] > order_start) | (order_end[q] < order_end))
    return parent, crossing


def build_lanes(r_start, r_end, r_thread, r_domain, pushpop, live, n_threads, warnings) -> Lanes:
    """One lane per thread; a thread whose ranges do not nest gets one lane per NVTX domain; a lane
    that still does not nest is left out (its ranges are listed, but contain nothing)."""
    pp = np.flatnonzero(pushpop & live & (r_thread >= 0))
    domains = int(r_domain.max(initial=0)) + 2
    split = np.zeros(n_threads, bool)
    while True:
        lane_key = r_thread[pp] * domains + np.where(split[r_thread[pp]], r_domain[pp] + 1, 0)
        order = np.lexsort((pp, lane_key))          # pp in range_id order: by start, longer first
        pp, lane_key = pp[order], lane_key[order]
        lane = np.unique(lane_key, return_inverse=True)[1].reshape(-1).astype(np.int64)
        parent, crossing = _tree(r_start[pp], r_end[pp], lane)
        if not crossing.any():
            break
        bad_lane = np.zeros(int(lane.max()) + 1, bool)
        bad_lane[lane[crossing]] = True
        bad = bad_lane[lane]
        threads = np.unique(r_thread[pp[bad]])
        if not split[threads].all():
            split[threads] = True                   # try again, one lane per domain on those threads
            continue
        warnings.append(f"{int(bad.sum()):,} push/pop ranges on {threads.size} thread(s) do not nest even within "
                        "their NVTX domain: they are listed but contain no GPU work")
        live[pp[bad]] = False
        pp = pp[~bad]
    depth = _depths(parent)
    if depth.size and depth.max() > MAX_DEPTH:   # the passes over levels below would take depth x ranges
        raise ValueError(f"NVTX push/pop ranges nest {int(depth.max()) + 1:,} deep on one thread, more than "
                         f"{MAX_DEPTH + 1:,}")
    thread_lanes = np.zeros((n_threads, 2), np.int64)
    if pp.size:
        first_of_lane = np.r_[True, lane[1:] != lane[:-1]]
        lane_thread = r_thread[pp][first_of_lane]
        starts = np.flatnonzero(np.r_[True, lane_thread[1:] != lane_thread[:-1]])
        thread_lanes[lane_thread[starts], 0] = starts
        thread_lanes[lane_thread[starts], 1] = np.diff(np.r_[starts, lane_thread.size])
    return Lanes(pp=pp, lane=lane, parent=parent, depth=depth, key=np.zeros(0, np.int64), start=r_start[pp],
                 end=r_end[pp], thread_lanes=thread_lanes, t0=0)


def _depths(parent: np.ndarray) -> np.ndarray:
    """Distance to the root of every entry of a forest (parent -1: a root), by pointer jumping:
    log2(depth) passes (a level-by-level pass was depth passes: quadratic on a hostile nesting)."""
    depth = (parent >= 0).astype(np.int64)
    up = parent.copy()
    for _ in range(64):   # 2**64 levels: parent links point back (index order), so no cycle keeps it going
        has = up >= 0
        if not has.any():
            break
        depth = depth + np.where(has, depth[np.maximum(up, 0)], 0)
        up = np.where(has, up[np.maximum(up, 0)], -1)
    return depth


def packed(lane: np.ndarray, t: np.ndarray, t0: int) -> np.ndarray:
    return (lane << TIME_BITS) | (t - t0)


def innermost(lanes: Lanes, lane: np.ndarray, t_start: np.ndarray, t_end: np.ndarray) -> np.ndarray:
    """Per item: the innermost range of `lane` that encloses [t_start, t_end], as an index into
    lanes.pp, -1 none. Fastest with items sorted by (lane, t_start)."""
    if not lanes.pp.size or not lane.size:
        return np.full(lane.size, -1, np.int64)
    cand = np.searchsorted(lanes.key, packed(lane, t_start, lanes.t0), side="right") - 1
    cand[(cand >= 0) & (lanes.lane[np.maximum(cand, 0)] != lane)] = -1
    at = cand.copy()
    todo = np.flatnonzero(at >= 0)
    while todo.size:
        r = at[todo]
        outlasts = lanes.end[r] >= t_end[todo]
        todo = todo[~outlasts]
        at[todo] = lanes.parent[r[~outlasts]]
        todo = todo[at[todo] >= 0]
    return at


# ------------------------------------------------------------------------------------------- engine

def attribute(raw: Raw) -> Attribution:
    ops, calls, nvtx = raw.ops, raw.calls, raw.nvtx
    warnings: list[str] = []
    n_ops = len(ops)

    # 1. op -> call
    index = CallIndex(calls.process, calls.correlation)
    op_call = index.lookup(ops.process, ops.correlation) if n_ops else np.zeros(0, np.int64)
    if index.duplicates:
        warnings.append(f"{index.duplicates:,} API calls repeat the (process, correlation id) of an earlier call: "
                        "their GPU operations are joined to the first call only")
    del index

    # ranges and threads
    r_start = nvtx.ranges.column("start_ns").to_numpy()
    r_end = nvtx.ranges.column("end_ns").to_numpy()
    threads = np.unique(nvtx.thread[nvtx.thread >= 0])
    r_thread = np.where(nvtx.thread >= 0, np.searchsorted(threads, nvtx.thread), -1).astype(np.int64)
    n_ranges = r_start.size
    r_domain = nvtx.domain_id
    live = (r_thread >= 0) & (nvtx.pushpop | nvtx.same_thread)

    # per op: its call's thread (dense, -1 when that thread has no ranges), call start and end
    launched = op_call >= 0
    call_thread = calls.thread[np.maximum(op_call, 0)] if n_ops and len(calls) else np.zeros(n_ops, np.int64)
    tpos = np.minimum(np.searchsorted(threads, call_thread), max(threads.size - 1, 0))
    op_thread = np.where(launched & (threads.size > 0) & (threads[tpos] == call_thread), tpos, -1) \
        if threads.size else np.full(n_ops, -1, np.int64)
    del tpos, call_thread
    cs = calls.start[np.maximum(op_call, 0)] if len(calls) else np.zeros(n_ops, np.int64)
    ce = calls.end[np.maximum(op_call, 0)] if len(calls) else np.zeros(n_ops, np.int64)

    # 2. lanes
    lanes = build_lanes(r_start, r_end, r_thread, r_domain, nvtx.pushpop, live, threads.size, warnings)
    has_thread = op_thread >= 0
    times = [r_start[live], r_end[live], cs[has_thread], ce[has_thread]]
    t0 = int(min((t.min() for t in times if t.size), default=0))
    t1 = int(max((t.max() for t in times if t.size), default=0))
    if t1 - t0 >= 1 << TIME_BITS:
        raise ValueError("the trace spans more than 19 hours")  # packed keys would overflow
    lanes.t0, lanes.key = t0, packed(lanes.lane, lanes.start, t0)

    # ops with a ranged thread, in (thread, call start) order
    k = np.flatnonzero(has_thread)
    okey = packed(op_thread[k], cs[k], t0)
    o = np.argsort(okey, kind="stable")
    op_order, op_sorted = k[o], okey[o]
    del k, okey, o

    dur = ops.end - ops.start
    is_kernel = ops.kind == KERNEL
    first_of_call = _first_of_call(op_call)
    stream_key = ops.stream_key
    overlap = _self_overlapping_streams(ops, stream_key, is_kernel)
    per_op = (ops, dur, is_kernel, first_of_call, stream_key, overlap)

    # 3-4. innermost range of each op in each lane of its thread, totals rolled up the trees
    totals = _Totals(n_ranges)
    op_inner = np.full(n_ops, -1, np.int64)
    inner_start = np.full(n_ops, -BIG, np.int64)
    inner_end = np.full(n_ops, BIG, np.int64)
    lane_inner, groups, members = [], [], []
    th = op_thread[op_order]
    for rank in range(int(lanes.thread_lanes[:, 1].max(initial=0))):
        sel = lanes.thread_lanes[th, 1] > rank
        ids = op_order[sel]
        at = innermost(lanes, lanes.thread_lanes[th[sel], 0] + rank, cs[ids], ce[ids])
        hit = at >= 0
        ids, at = ids[hit], at[hit]
        rng = lanes.pp[at]
        lane_inner.append((ids, rng))
        groups.append(at)
        members.append(ids)
        tighter = (r_start[rng] > inner_start[ids]) | ((r_start[rng] == inner_start[ids]) & (r_end[rng] < inner_end[ids]))
        upd = ids[tighter]
        op_inner[upd], inner_start[upd], inner_end[upd] = rng[tighter], r_start[rng[tighter]], r_end[rng[tighter]]
    del th
    if groups:
        per_pp = _op_totals(len(lanes.pp), np.concatenate(groups), np.concatenate(members), *per_op)
        _roll_up(per_pp, lanes)
        totals.add(lanes.pp, per_pp)
    del groups, members

    # 5. start/end ranges
    se = np.flatnonzero(live & ~nvtx.pushpop)

    def se_pairs():
        return _ops_inside(op_order, op_sorted, ce, se, r_thread, r_start, r_end, t0)

    if se.size:
        g, ids = se_pairs()
        rng = se[g]
        per_se = _op_totals(se.size, g, ids, *per_op)
        totals.add(se, per_se)
        tighter = (r_start[rng] > inner_start[ids]) | ((r_start[rng] == inner_start[ids]) & (r_end[rng] < inner_end[ids]))
        # several start/end ranges may contain one op: the latest-starting, then the shortest wins
        order = np.lexsort((-r_end[rng[tighter]], r_start[rng[tighter]]))
        upd, best = ids[tighter][order], rng[tighter][order]
        op_inner[upd], inner_start[upd], inner_end[upd] = best, r_start[best], r_end[best]
        del g, ids, rng

    # tree shape of every range: push/pop from the lanes, start/end under the tightest push/pop range
    parent = np.full(n_ranges, -1, np.int64)
    depth = np.zeros(n_ranges, np.int64)
    parent[lanes.pp] = np.where(lanes.parent >= 0, lanes.pp[np.maximum(lanes.parent, 0)], -1)
    depth[lanes.pp] = lanes.depth
    if se.size and lanes.pp.size:
        first_lane = lanes.thread_lanes[r_thread[se], 0]
        has_lane = lanes.thread_lanes[r_thread[se], 1] > 0
        holder = innermost(lanes, np.where(has_lane, first_lane, -1), r_start[se], r_end[se])
        parent[se] = np.where(holder >= 0, lanes.pp[np.maximum(holder, 0)], -1)
        depth[se] = np.where(holder >= 0, lanes.depth[np.maximum(holder, 0)] + 1, 0)

    # 6. busy: exact union for ranges whose kernels ran on several streams (or a self-overlapping one)
    busy = totals.inclusive.copy()
    multi = (totals.stream_lo < totals.stream_hi) | (totals.overlap > 0)
    multi_ranges = np.flatnonzero(multi)
    if multi_ranges.size:
        busy[multi_ranges] = _union_busy(ops, is_kernel, _ops_inside(op_order, op_sorted, ce, multi_ranges, r_thread,
                                                                     r_start, r_end, t0), multi_ranges.size)

    # exclusive: each kernel in its tightest range
    ek = is_kernel & (op_inner >= 0)
    exclusive = np.bincount(op_inner[ek], weights=dur[ek], minlength=n_ranges)

    # instances nested in an instance of the same name count their kernels once per name
    self_nested = np.zeros(n_ranges, bool)
    anc = parent.copy()
    while (anc >= 0).any():
        up = anc >= 0
        self_nested |= up & (nvtx.name_id[np.maximum(anc, 0)] == nvtx.name_id)
        anc = np.where(up, parent[np.maximum(anc, 0)], -1)

    has_ops = totals.gpu_ops > 0
    stats = {
        "cpu_ns": r_end - r_start,
        "inclusive_ns": np.rint(totals.inclusive).astype(np.int64),
        "exclusive_ns": np.rint(exclusive).astype(np.int64),
        "busy_ns": np.rint(busy).astype(np.int64),
        "span_ns": np.where(has_ops, totals.last - totals.first, 0),
        "first_ns": np.where(has_ops, totals.first, -1), "last_ns": np.where(has_ops, totals.last, -1),
        "kernels": totals.kernels, "gpu_ops": totals.gpu_ops, "launches": totals.launches,
        "outermost_of_name": ~self_nested,
    }
    ranges = Ranges(start=r_start, end=r_end, thread=r_thread, pushpop=nvtx.pushpop, live=live, parent=parent,
                    depth=depth, name_id=nvtx.name_id, names=nvtx.names)
    return Attribution(ranges=ranges, threads=threads, op_call=op_call, op_thread=op_thread, op_inner=op_inner,
                       op_lane_inner=lane_inner, op_startend=lambda: _named_pairs(se, se_pairs) if se.size else
                       (np.zeros(0, np.int64), np.zeros(0, np.int64)),
                       stats=stats, lanes=lanes, warnings=warnings)


def _named_pairs(se, pairs):
    g, ids = pairs()
    return ids, se[g]


def _first_of_call(op_call: np.ndarray) -> np.ndarray:
    """One op per launching call is its 'launch' (a CUDA-graph launch makes many ops)."""
    first = np.zeros(op_call.size, bool)
    launched = np.flatnonzero(op_call >= 0)
    if launched.size:
        _, at = np.unique(op_call[launched], return_index=True)
        first[launched[at]] = True
    return first


def _self_overlapping_streams(ops, stream_key, is_kernel) -> np.ndarray:
    """Per op: a kernel on a stream where two kernels overlap in time (programmatic dependent
    launch, or a damaged trace); the union of intervals then differs from the sum of durations."""
    out = np.zeros(len(ops), bool)
    k = np.flatnonzero(is_kernel)
    if k.size < 2:
        return out
    order = k[np.lexsort((ops.start[k], stream_key[k]))]
    s, e, key = ops.start[order], ops.end[order], stream_key[order]
    first = np.r_[True, key[1:] != key[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(key.size), 0))
    v = e - s[group_start]
    offset = _group_offset(key, v)
    reach = np.maximum.accumulate(v + offset) - offset + s[group_start]   # furthest end so far, per stream
    overlaps = ~first[1:] & (s[1:] < reach[:-1])
    if overlaps.any():
        bad = np.unique(key[1:][overlaps])
        out[k] = np.isin(stream_key[k], bad)
    return out


def _group_offset(key: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per element, an offset that lifts each group (runs of equal key) above all earlier groups."""
    first = np.r_[True, key[1:] != key[:-1]]
    group = np.cumsum(first) - 1
    width = np.zeros(int(group[-1]) + 1 if group.size else 0, np.int64)
    np.maximum.at(width, group, values + 1)
    return (np.cumsum(width) - width)[group]


class _Totals:
    """Per-range sums filled lane by lane and by the start/end pass."""

    def __init__(self, n: int):
        self.inclusive = np.zeros(n, np.float64)
        self.kernels = np.zeros(n, np.int64)
        self.gpu_ops = np.zeros(n, np.int64)
        self.launches = np.zeros(n, np.int64)
        self.first = np.full(n, BIG, np.int64)
        self.last = np.full(n, -BIG, np.int64)
        self.stream_lo = np.full(n, BIG, np.int64)
        self.stream_hi = np.full(n, -BIG, np.int64)
        self.overlap = np.zeros(n, np.int64)

    def add(self, rows: np.ndarray, t: dict) -> None:
        self.inclusive[rows] = t["inclusive"]
        self.kernels[rows] = t["kernels"]
        self.gpu_ops[rows] = t["gpu_ops"]
        self.launches[rows] = t["launches"]
        self.first[rows], self.last[rows] = t["first"], t["last"]
        self.stream_lo[rows], self.stream_hi[rows] = t["stream_lo"], t["stream_hi"]
        self.overlap[rows] = t["overlap"]


ROLL_UP = {"inclusive": np.add, "kernels": np.add, "gpu_ops": np.add, "launches": np.add, "first": np.minimum,
           "last": np.maximum, "stream_lo": np.minimum, "stream_hi": np.maximum, "overlap": np.add}


def _op_totals(n: int, group: np.ndarray, ids: np.ndarray, ops, dur, is_kernel, first_of_call, stream_key,
               overlap) -> dict:
    """Per group (range): kernel ns and counts, launches, first/last op, streams of its kernels, and
    how many of them ran on a stream that overlaps itself."""
    kg = is_kernel[ids]
    t = {"inclusive": np.bincount(group[kg], weights=dur[ids[kg]], minlength=n),
         "kernels": np.bincount(group[kg], minlength=n).astype(np.int64),
         "gpu_ops": np.bincount(group, minlength=n).astype(np.int64),
         "launches": np.bincount(group[first_of_call[ids]], minlength=n).astype(np.int64),
         "first": np.full(n, BIG, np.int64), "last": np.full(n, -BIG, np.int64),
         "stream_lo": np.full(n, BIG, np.int64), "stream_hi": np.full(n, -BIG, np.int64),
         "overlap": np.bincount(group[overlap[ids]], minlength=n).astype(np.int64)}
    np.minimum.at(t["first"], group, ops.start[ids])
    np.maximum.at(t["last"], group, ops.end[ids])
    np.minimum.at(t["stream_lo"], group[kg], stream_key[ids[kg]])
    np.maximum.at(t["stream_hi"], group[kg], stream_key[ids[kg]])
    return t


def _roll_up(t: dict, lanes: Lanes) -> None:
    """Totals of each range's subtree: children into parents, deepest level first."""
    for level in range(int(lanes.depth.max(initial=0)), 0, -1):
        sel = np.flatnonzero(lanes.depth == level)
        up = lanes.parent[sel]
        for name, ufunc in ROLL_UP.items():
            ufunc.at(t[name], up, t[name][sel])


def _ops_inside(op_order, op_sorted, call_end, rs, r_thread, r_start, r_end, t0) -> tuple[np.ndarray, np.ndarray]:
    """(position in rs, op) for every op launched inside range rs[i] on its thread: a slice of the
    ops in (thread, call start) order, less calls that end after the range."""
    lo = np.searchsorted(op_sorted, packed(r_thread[rs], r_start[rs], t0), side="left")
    hi = np.searchsorted(op_sorted, packed(r_thread[rs], r_end[rs], t0), side="right")
    counts = hi - lo
    group = np.repeat(np.arange(rs.size), counts)
    offset = np.repeat(lo - np.cumsum(counts) + counts, counts)
    ids = op_order[np.arange(group.size) + offset]
    keep = call_end[ids] <= r_end[rs][group]
    return group[keep], ids[keep]


def _union_busy(ops, is_kernel, inside: tuple[np.ndarray, np.ndarray], n_groups: int) -> np.ndarray:
    """Per group, the length of the union of its kernels' intervals: sorted by start, each kernel
    adds what reaches past the furthest end before it in the same group."""
    g, ids = inside
    kg = is_kernel[ids]
    g, ids = g[kg], ids[kg]
    s, e = ops.start[ids], ops.end[ids]
    order = np.lexsort((e, s, g))
    g, s, e = g[order], s[order], e[order]
    first_in_group = np.r_[True, g[1:] != g[:-1]] if g.size else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(first_in_group, np.arange(g.size), 0)) if g.size else g
    v = e - s[group_start]
    offset = _group_offset(g, v)
    reach = np.maximum.accumulate(v + offset) - offset + s[group_start] if g.size else v
    prev = np.where(first_in_group, s, np.r_[s[:1], reach[:-1]]) if g.size else s
    return np.bincount(g, weights=np.maximum(0, e - np.maximum(s, prev)), minlength=n_groups)
