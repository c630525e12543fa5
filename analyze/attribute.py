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
3. The calls of threads with ranges, in (thread, start) order (a stable sort by thread: the runtime
   table is in time order), each asked once for its innermost range in each lane of its thread:
   `searchsorted` of the packed key (lane << 46 | call start) in the lane's ranges, climbed until the
   range outlasts the call. Ops take their call's answer.
4. Per range totals at the innermost ranges, rolled up to every ancestor level by level.
5. Start/end ranges (few): the calls of their thread made between their start and end are one
   slice of the calls in (thread, start) order; their ops are taken through the calls.
6. Busy = inclusive kernel time for a range whose kernels ran on one stream that never overlaps
   itself; else the exact union of its kernels' intervals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsocr_perf.analyze.keys import dense_index, index_in
from dsocr_perf.analyze.read.raw import KERNEL, Raw

TIME_BITS = 46      # packed (lane << 46 | time - t0): ~19.5 h of trace, 2**17 lanes
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
    calls: object             # CallOrder: the calls on ranged threads and their ranges
    calls_ops: object         # CallsOps: the ops of each call
    stats: dict               # per range: inclusive_ns, exclusive_ns, busy_ns, span_ns, first_ns, last_ns,
                              #   kernels, gpu_ops, launches, cpu_ns, outermost_of_name
    lanes: object             # the lane trees
    warnings: list
    calls_end: np.ndarray
    attributed_ns: int        # kernel time launched inside some range

    @property
    def op_inner(self) -> np.ndarray:
        """Per op: its tightest enclosing range, -1."""
        inner = self.calls.inner
        if not inner.size:
            return np.full(self.op_call.size, -1, np.int64)
        return np.where(self.op_call >= 0, inner[np.maximum(self.op_call, 0)], -1)

    def op_lane_inner(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per lane rank: (ops, their innermost push/pop range in that lane)."""
        out = []
        launched = np.flatnonzero(self.op_call >= 0)
        for per_call in self.calls.lane_at:
            at = per_call[self.op_call[launched]]
            out.append((launched[at >= 0], self.lanes.pp[at[at >= 0]]))
        return out

    def op_startend(self) -> tuple[np.ndarray, np.ndarray]:
        """(op, start/end range) for every op launched inside a start/end range."""
        se, c = self.calls.startend, self.calls
        if not se.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        r = self.ranges
        g, call = calls_inside(c.order, c.sorted_key, self.calls_end, se, r.thread, r.start, r.end, self.lanes.t0)
        g, ops = self.calls_ops.expand(g, call)
        return ops, se[g]


# ------------------------------------------------------------------------------------- op -> call

class CallIndex:
    """Calls by (process, correlation). Correlation ids are small counters per process: a direct
    table when they stay small, else sorted keys."""

    def __init__(self, process: np.ndarray, correlation: np.ndarray):
        self.procs, proc = dense_index(process)
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
        pos = index_in(process, self.procs)
        known = (pos >= 0) & (correlation >= 0)
        if self.table is not None:
            inside = known & (correlation < self.width)
            slot = np.where(inside, pos * self.width + correlation, 0)
            return np.where(inside, self.table[slot] if self.table.size else -1, -1)
        key = (np.maximum(pos, 0) << 32) | (correlation & 0xFFFFFFFF)
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
        if lane_key.size and not (lane_key[1:] >= lane_key[:-1]).all():   # pp in range_id order: by start, longer first
            order = np.lexsort((pp, lane_key))
            pp, lane_key = pp[order], lane_key[order]
        _, lane = dense_index(lane_key)
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
    depth = np.zeros(pp.size, np.int64)
    for _ in range(pp.size + 1):
        new = np.where(parent >= 0, depth[np.maximum(parent, 0)] + 1, 0)
        if (new == depth).all():
            break
        depth = new
    thread_lanes = np.zeros((n_threads, 2), np.int64)
    if pp.size:
        first_of_lane = np.r_[True, lane[1:] != lane[:-1]]
        lane_thread = r_thread[pp][first_of_lane]
        starts = np.flatnonzero(np.r_[True, lane_thread[1:] != lane_thread[:-1]])
        thread_lanes[lane_thread[starts], 0] = starts
        thread_lanes[lane_thread[starts], 1] = np.diff(np.r_[starts, lane_thread.size])
    return Lanes(pp=pp, lane=lane, parent=parent, depth=depth, key=np.zeros(0, np.int64), start=r_start[pp],
                 end=r_end[pp], thread_lanes=thread_lanes, t0=0)


def packed(lane: np.ndarray, t: np.ndarray, t0: int) -> np.ndarray:
    out = t - t0
    out |= lane.astype(np.int64, copy=False) << TIME_BITS
    return out


def innermost(lanes: Lanes, lane: np.ndarray, t_start: np.ndarray, t_end: np.ndarray) -> np.ndarray:
    """Per item: the innermost range of `lane` that encloses [t_start, t_end], as an index into
    lanes.pp, -1 none. Fastest with items sorted by (lane, t_start)."""
    if not lanes.pp.size or not lane.size:
        return np.full(lane.size, -1, np.int64)
    at = np.searchsorted(lanes.key, packed(lane, t_start, lanes.t0), side="right") - 1
    other = at >= 0
    other &= lanes.lane[np.maximum(at, 0)] != lane
    at[other] = -1
    todo = np.flatnonzero(at >= 0)
    todo = todo[lanes.end[at[todo]] < t_end[todo]]      # candidates that end before the item: climb
    while todo.size:
        at[todo] = lanes.parent[at[todo]]
        todo = todo[at[todo] >= 0]
        todo = todo[lanes.end[at[todo]] < t_end[todo]]
    return at


# ------------------------------------------------------------------------------------------- engine

def attribute(raw: Raw) -> Attribution:
    ops, calls, nvtx = raw.ops, raw.calls, raw.nvtx
    warnings: list[str] = []
    n_ops, n_calls = len(ops), len(calls)

    # 1. op -> call
    index = CallIndex(calls.process, calls.correlation)
    op_call = index.lookup(ops.process, ops.correlation) if n_ops else np.zeros(0, np.int64)
    if index.duplicates:
        warnings.append(f"{index.duplicates:,} API calls repeat the (process, correlation id) of an earlier call: "
                        "their GPU operations are joined to the first call only")
    del index
    calls_of = CallsOps(op_call, n_calls)

    # ranges, their threads (dense ids), the lanes
    r_start = nvtx.ranges.column("start_ns").to_numpy()
    r_end = nvtx.ranges.column("end_ns").to_numpy()
    threads = np.unique(nvtx.thread[nvtx.thread >= 0])
    r_thread = np.where(nvtx.thread >= 0, np.searchsorted(threads, nvtx.thread), -1).astype(np.int64)
    n_ranges = r_start.size
    live = (r_thread >= 0) & (nvtx.pushpop | nvtx.same_thread)
    lanes = build_lanes(r_start, r_end, r_thread, nvtx.domain_id, nvtx.pushpop, live, threads.size, warnings)

    # 2. the calls made on threads that have ranges, in (thread, start) order: every containment
    # question is asked once per call, and its ops take the answer through op_call
    call_thread = index_in(calls.thread, threads)
    call_order = thread_order(call_thread, calls.start, threads.size)
    call_th = call_thread[call_order]
    c_start, c_end = calls.start[call_order], calls.end[call_order]
    times = [t for t in (r_start[live], r_end[live], c_start, c_end) if t.size]
    t0 = int(min(t.min() for t in times)) if times else 0
    t1 = int(max(t.max() for t in times)) if times else 0
    if t1 - t0 >= 1 << TIME_BITS:
        raise ValueError("the trace spans more than 19 hours")  # packed keys would overflow
    lanes.t0, lanes.key = t0, packed(lanes.lane, lanes.start, t0)
    call_sorted = packed(call_th, c_start, t0)

    # 3. innermost push/pop range of each call in each lane of its thread
    call_inner = np.full(n_calls, -1, np.int64)
    lane_at = []                                       # per lane rank: per call, index into lanes.pp or -1
    for rank in range(int(lanes.thread_lanes[:, 1].max(initial=0))):
        has = lanes.thread_lanes[call_th, 1] > rank
        every = bool(has.all())
        ids = call_order if every else call_order[has]
        at = innermost(lanes, lanes.thread_lanes[call_th if every else call_th[has], 0] + rank,
                       c_start if every else c_start[has], c_end if every else c_end[has])
        per_call = np.full(n_calls, -1, np.int64)
        per_call[ids] = at
        lane_at.append(per_call)
        hit = at >= 0
        if rank == 0:
            call_inner[ids[hit]] = lanes.pp[at[hit]]
        else:
            _tighten(call_inner, ids[hit], lanes.pp[at[hit]], r_start, r_end)
    del call_th, c_start, c_end

    # 4. per op totals, at each op's innermost range per lane, rolled up the trees
    dur = ops.end - ops.start
    is_kernel = ops.kind == KERNEL
    per_op = (ops, dur, is_kernel, calls_of.first_op(), ops.stream_key, _self_overlapping(ops, is_kernel))
    launched = calls_of.launched()
    totals = _Totals(n_ranges)
    groups, members = [], []
    for per_call in lane_at:
        at = per_call[op_call if launched is None else op_call[launched]]
        hit = at >= 0
        groups.append(np.compress(hit, at))
        members.append(np.flatnonzero(hit) if launched is None else np.compress(hit, launched))
    if groups:
        per_pp = _op_totals(len(lanes.pp), np.concatenate(groups), np.concatenate(members), *per_op)
        _roll_up(per_pp, lanes)
        totals.add(lanes.pp, per_pp)
    del groups, members

    # 5. start/end ranges: the calls of their thread between their start and end, one slice each
    se = np.flatnonzero(live & ~nvtx.pushpop)
    if se.size:
        g, c = calls_inside(call_order, call_sorted, calls.end, se, r_thread, r_start, r_end, t0)
        _tighten(call_inner, c, se[g], r_start, r_end)
        g_ops, ids = calls_of.expand(g, c)
        totals.add(se, _op_totals(se.size, g_ops, ids, *per_op))

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

    # 6. busy: the exact union for ranges whose kernels ran on several streams (or one that overlaps itself)
    busy = totals.inclusive.copy()
    multi = np.flatnonzero((totals.stream_lo < totals.stream_hi) | (totals.overlap > 0))
    if multi.size:
        g, c = calls_inside(call_order, call_sorted, calls.end, multi, r_thread, r_start, r_end, t0)
        busy[multi] = _union_busy(ops, is_kernel, calls_of.expand(g, c), multi.size)

    # exclusive: each kernel in its tightest range
    kernel_calls = op_call[is_kernel]
    inner = np.where(kernel_calls >= 0, call_inner[np.maximum(kernel_calls, 0)], -1) if n_calls else \
        np.full(kernel_calls.size, -1, np.int64)
    hit = inner >= 0
    exclusive = np.bincount(np.compress(hit, inner), weights=np.compress(hit, dur[is_kernel]), minlength=n_ranges)
    del kernel_calls, inner, hit

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
    calls_index = CallOrder(order=call_order, sorted_key=call_sorted, thread=call_thread, lane_at=lane_at,
                            inner=call_inner, startend=se)
    return Attribution(ranges=ranges, threads=threads, op_call=op_call, calls=calls_index, calls_ops=calls_of,
                       stats=stats, lanes=lanes, warnings=warnings, calls_end=calls.end,
                       attributed_ns=int(round(float(exclusive.sum()))))


def thread_order(call_thread: np.ndarray, start: np.ndarray, n_threads: int) -> np.ndarray:
    """The calls with a thread (call_thread >= 0) in (thread, start) order, ties in table order: a
    stable sort on the thread alone when each thread's calls are in time order already (nsys writes
    the runtime table in time order), else on both."""
    ranged = int(np.count_nonzero(call_thread >= 0))
    if n_threads < 1 << 15:
        if ranged == call_thread.size and n_threads == 1:
            order = np.arange(call_thread.size)
        else:
            key = call_thread.astype(np.int16)
            key[call_thread < 0] = n_threads              # calls without ranges sort last, and are cut
            order = np.argsort(key, kind="stable")[:ranged]
        s, th = start[order], call_thread[order]
        if ((s[1:] >= s[:-1]) | (th[1:] != th[:-1])).all():
            return order
    mine = np.flatnonzero(call_thread >= 0)
    return mine[np.lexsort((start[mine], call_thread[mine]))]


def _tighten(inner: np.ndarray, ids: np.ndarray, rng: np.ndarray, r_start, r_end) -> None:
    """inner[ids] = rng where rng is tighter (starts later; at an equal start, ends earlier) than the
    range there now; with repeated ids the tightest wins."""
    if not ids.size:
        return
    current = inner[ids]
    has = current >= 0
    cur = np.maximum(current, 0)
    tighter = ~has | (r_start[rng] > r_start[cur]) | ((r_start[rng] == r_start[cur]) & (r_end[rng] < r_end[cur]))
    ids, rng = ids[tighter], rng[tighter]
    if ids.size > 1 and np.bincount(ids).max() > 1:
        order = np.lexsort((-r_end[rng], r_start[rng]))      # ascending tightness: the last write wins
        ids, rng = ids[order], rng[order]
    inner[ids] = rng


class CallsOps:
    """The GPU ops of each call: usually one; a CUDA-graph launch makes many (then ops sorted by call)."""

    def __init__(self, op_call: np.ndarray, n_calls: int):
        self.op_call, self.n_calls = op_call, n_calls
        self.all_launched = bool(op_call.size) and int(op_call.min()) >= 0
        self._launched = None if self.all_launched else np.flatnonzero(op_call >= 0)
        on_call = op_call if self._launched is None else op_call[self._launched]
        self.counts = np.bincount(on_call, minlength=n_calls) if n_calls else np.zeros(0, np.int64)
        self.single = int(self.counts.max(initial=0)) <= 1       # no call launched two ops
        self._order = self._op_of = None

    def launched(self) -> np.ndarray | None:
        """The ops with a call; None when every op has one."""
        return self._launched

    def first_op(self) -> np.ndarray:
        """Per op: whether it is the first op of its call (one 'launch' per call)."""
        if self.single:
            return self.op_call >= 0
        first = np.zeros(self.op_call.size, bool)
        launched = np.flatnonzero(self.op_call >= 0)
        seen = np.full(self.n_calls, -1, np.int64)
        seen[self.op_call[launched[::-1]]] = launched[::-1]     # the first op of each call is written last
        first[seen[seen >= 0]] = True
        return first

    def expand(self, group: np.ndarray, call: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group, op) pairs for (group, call) pairs."""
        if self.single:
            if self._op_of is None:
                self._op_of = np.full(self.n_calls, -1, np.int64)
                launched = np.flatnonzero(self.op_call >= 0) if self._launched is None else self._launched
                self._op_of[self.op_call[launched]] = launched
            op = self._op_of[call]
            keep = op >= 0
            return np.compress(keep, group), np.compress(keep, op)
        if self._order is None:
            launched = np.flatnonzero(self.op_call >= 0)
            self._order = launched[np.argsort(self.op_call[launched], kind="stable")]
            self._first = np.cumsum(self.counts) - self.counts
        counts = self.counts[call]
        g = np.repeat(group, counts)
        offset = np.repeat(self._first[call] - np.cumsum(counts) + counts, counts)
        return g, self._order[np.arange(g.size) + offset]


@dataclass
class CallOrder:
    """The API calls on threads with ranges, in (thread, start) order, with their ranges."""
    order: np.ndarray         # call indexes
    sorted_key: np.ndarray    # packed (thread, start) of order
    thread: np.ndarray        # per call: dense thread index, -1
    lane_at: list             # per lane rank: per call, its innermost push/pop range (index into lanes.pp), -1
    inner: np.ndarray         # per call: its tightest range (push/pop or start/end), -1
    startend: np.ndarray      # the start/end ranges that take part


def _self_overlapping(ops, is_kernel) -> np.ndarray | None:
    """Per op: a kernel on a stream where two kernels overlap in time (programmatic dependent
    launch, or a damaged trace); the union of intervals then differs from the sum of durations.
    None when no stream overlaps itself."""
    k = np.flatnonzero(is_kernel)
    if k.size < 2:
        return None
    s, e = ops.start[k], ops.end[k]
    if (s[1:] >= s[:-1]).all() and not (s[1:] < np.maximum.accumulate(e)[:-1]).any():
        return None                                  # no two kernels overlap anywhere
    streams, stream = dense_index(ops.stream_key[k])
    order = np.argsort(stream.astype(np.int16), kind="stable") if streams.size < 1 << 15 else \
        np.argsort(stream, kind="stable")
    s, e, stream = s[order], e[order], stream[order]
    bounds = np.r_[0, np.flatnonzero(stream[1:] != stream[:-1]) + 1, stream.size]
    bad = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        ss, ee = s[lo:hi], e[lo:hi]
        if not (ss[1:] >= ss[:-1]).all():
            by_start = np.argsort(ss, kind="stable")
            ss, ee = ss[by_start], ee[by_start]
        if (ss[1:] < np.maximum.accumulate(ee)[:-1]).any():
            bad.append(int(stream[lo]))
    if not bad:
        return None
    out = np.zeros(len(ops), bool)
    out[k[order[np.isin(stream, bad)]]] = True
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
    g_k, ids_k = np.compress(kg, group), np.compress(kg, ids)
    first = first_of_call[ids]
    t = {"inclusive": np.bincount(g_k, weights=dur[ids_k], minlength=n),
         "kernels": np.bincount(g_k, minlength=n).astype(np.int64),
         "gpu_ops": np.bincount(group, minlength=n).astype(np.int64),
         "launches": np.bincount(group if first.all() else np.compress(first, group), minlength=n).astype(np.int64),
         "first": np.full(n, BIG, np.int64), "last": np.full(n, -BIG, np.int64),
         "stream_lo": np.full(n, BIG, np.int64), "stream_hi": np.full(n, -BIG, np.int64),
         "overlap": np.zeros(n, np.int64) if overlap is None else
         np.bincount(np.compress(overlap[ids], group), minlength=n).astype(np.int64)}
    np.minimum.at(t["first"], group, ops.start[ids])
    np.maximum.at(t["last"], group, ops.end[ids])
    streams = stream_key[ids_k]
    np.minimum.at(t["stream_lo"], g_k, streams)
    np.maximum.at(t["stream_hi"], g_k, streams)
    return t


def _roll_up(t: dict, lanes: Lanes) -> None:
    """Totals of each range's subtree: children into parents, deepest level first."""
    for level in range(int(lanes.depth.max(initial=0)), 0, -1):
        sel = np.flatnonzero(lanes.depth == level)
        up = lanes.parent[sel]
        for name, ufunc in ROLL_UP.items():
            ufunc.at(t[name], up, t[name][sel])


def calls_inside(call_order, call_sorted, call_end, rs, r_thread, r_start, r_end, t0) -> tuple[np.ndarray, np.ndarray]:
    """(position in rs, call) for every call made inside range rs[i] on its thread: a slice of the
    calls in (thread, start) order, less calls that end after the range."""
    lo = np.searchsorted(call_sorted, packed(r_thread[rs], r_start[rs], t0), side="left")
    hi = np.searchsorted(call_sorted, packed(r_thread[rs], r_end[rs], t0), side="right")
    counts = hi - lo
    group = np.repeat(np.arange(rs.size), counts)
    offset = np.repeat(lo - np.cumsum(counts) + counts, counts)
    ids = call_order[np.arange(group.size) + offset]
    keep = call_end[ids] <= r_end[rs][group]
    if keep.all():
        return group, ids
    return np.compress(keep, group), np.compress(keep, ids)


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
