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
Passes over the ops and calls go in chunks (analyze.keys.CHUNK), sums accumulated chunk by chunk.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from dsocr_perf.analyze.keys import CHUNK, INDEX, accumulate, dense_index, distinct, index_in, spans
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
        return _through(self.calls.inner, self.op_call)

    def op_lane_inner(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per lane rank: (ops, their innermost push/pop range in that lane)."""
        out = []
        for per_call in self.calls.lane_at:
            at = _through(per_call, self.op_call)
            ops = np.flatnonzero(at >= 0)
            out.append((ops, self.lanes.pp[at[ops]]))
        return out

    def op_startend(self) -> tuple[np.ndarray, np.ndarray]:
        """(op, start/end range) for every op launched inside a start/end range."""
        se = self.calls.startend
        g, ops = self.calls_ops.expand(*self.calls_in(se))
        return ops.astype(np.int64), se[g]

    def calls_in(self, rs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in rs, call) for every call made inside range rs[i] on its thread."""
        pairs = list(self.calls.inside(rs, self.ranges, self.calls_end, self.lanes.t0))
        if not pairs:
            return np.zeros(0, np.int64), np.zeros(0, INDEX)
        return np.concatenate([g for g, _ in pairs]), np.concatenate([c for _, c in pairs])


def _through(per_call: np.ndarray, op_call: np.ndarray) -> np.ndarray:
    """Per op: per_call[its call] (int64), -1 where it has none."""
    out = np.full(op_call.size, -1, np.int64)
    for sl in spans(op_call.size):
        oc = op_call[sl]
        hit = oc >= 0
        out[sl][hit] = per_call[oc[hit]]
    return out


# ------------------------------------------------------------------------------------- op -> call

class CallIndex:
    """Calls by (process, correlation). Correlation ids are small counters per process: a direct
    table when they stay small, else sorted keys."""

    def __init__(self, process: np.ndarray, correlation: np.ndarray):
        self.procs = distinct(process)
        n = correlation.size
        self.duplicates = 0
        top = int(correlation.max()) + 1 if n else 1
        if self.procs.size * top <= 4 * n + 4096:
            self.width = top
            table = np.full(self.procs.size * top, -1, INDEX)
            usable = 0
            for sl in reversed(spans(n)):                # backwards: the FIRST call of a key is written last
                corr = correlation[sl]
                ids = np.flatnonzero(corr >= 0)[::-1]
                usable += ids.size
                table[index_in(process[sl][ids], self.procs) * top + corr[ids]] = ids + sl.start
            self.duplicates = int(usable - np.count_nonzero(table >= 0))
            self.table = table
            return
        self.table = None
        proc = index_in(process, self.procs)
        key = (proc.astype(np.int64) << 32) | (correlation & 0xFFFFFFFF)
        key = np.where(correlation >= 0, key, -1)
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
    calls, nvtx = raw.calls, raw.nvtx
    warnings: list[str] = []
    n_calls = len(calls)

    # 1. calls by (process, correlation), for the op -> call lookup
    index = CallIndex(calls.process, calls.correlation)
    if index.duplicates:
        warnings.append(f"{index.duplicates:,} API calls repeat the (process, correlation id) of an earlier call: "
                        "their GPU operations are joined to the first call only")

    # ranges, their threads (dense ids), the lanes
    r_start = nvtx.ranges.column("start_ns").to_numpy()
    r_end = nvtx.ranges.column("end_ns").to_numpy()
    threads = np.unique(nvtx.thread[nvtx.thread >= 0])
    r_thread = np.where(nvtx.thread >= 0, np.searchsorted(threads, nvtx.thread), -1).astype(np.int64)
    n_ranges = r_start.size
    live = (r_thread >= 0) & (nvtx.pushpop | nvtx.same_thread)
    lanes = build_lanes(r_start, r_end, r_thread, nvtx.domain_id, nvtx.pushpop, live, threads.size, warnings)

    # 2./3. the calls made on threads that have ranges, in (thread, start) order, each asked once for
    # its innermost range per lane; its ops take the answer through op_call
    order = CallOrder.of(calls, threads, r_start[live], r_end[live], lanes, n_calls)
    lanes.t0, lanes.key = order.t0, packed(lanes.lane, lanes.start, order.t0)
    order.find_innermost(calls, lanes, r_start, r_end)

    # the ops: everything so far needed only the calls and ranges, read before the biggest table
    ops = raw.ops
    n_ops = len(ops)
    op_call = np.empty(n_ops, INDEX)
    for sl in spans(n_ops):
        op_call[sl] = index.lookup(ops.process[sl], ops.correlation[sl])
    del index
    calls_of = CallsOps(op_call, n_calls)

    # 4. per op totals, at each op's innermost range per lane, rolled up the trees
    overlap = _self_overlapping(ops)
    totals = _Totals(n_ranges)
    if order.lane_at:
        per_pp = _Totals(len(lanes.pp))
        buffer = np.empty(min(n_ops, CHUNK), np.int64)   # one buffer for every chunk: fresh pages cost more than the fill
        for sl in spans(n_ops):
            oc = op_call[sl]
            for per_call in order.lane_at:
                at = buffer[:oc.size]
                at.fill(-1)
                hit = oc >= 0
                at[hit] = per_call[oc[hit]]
                mine = np.flatnonzero(at >= 0)
                per_pp.add(at[mine], mine + sl.start, ops, calls_of, overlap)
        per_pp.roll_up(lanes)
        totals.store(lanes.pp, per_pp)

    # 5. start/end ranges: the calls of their thread between their start and end, one slice each
    parent = np.full(n_ranges, -1, np.int64)
    depth = np.zeros(n_ranges, np.int64)
    ranges = Ranges(start=r_start, end=r_end, thread=r_thread, pushpop=nvtx.pushpop, live=live, parent=parent,
                    depth=depth, name_id=nvtx.name_id, names=nvtx.names)
    se = order.startend = np.flatnonzero(live & ~nvtx.pushpop)
    if se.size:
        per_se = _Totals(se.size)
        tightest = np.full(n_calls, -1, INDEX)
        for g, c in order.inside(se, ranges, calls.end, order.t0):
            _tighten(tightest, c, se[g], r_start, r_end, ties_to_later=True)
            g_ops, op_ids = calls_of.expand(g, c)
            per_se.add(g_ops, op_ids, ops, calls_of, overlap)
        totals.store(se, per_se)
        order.take_tighter(tightest, r_start, r_end)
        del tightest

    # tree shape of every range: push/pop from the lanes, start/end under the tightest push/pop range
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
        pairs = list(order.inside(multi, ranges, calls.end, order.t0))
        g = np.concatenate([g for g, _ in pairs])
        c = np.concatenate([c for _, c in pairs])
        busy[multi] = _union_busy(ops, calls_of.expand(g, c), multi.size)

    # exclusive: each kernel in its tightest range
    exclusive = np.zeros(n_ranges, np.float64)
    for sl in spans(n_ops):
        oc = op_call[sl]
        kernel = np.flatnonzero((oc >= 0) & (ops.kind[sl] == KERNEL))
        inner = order.inner[oc[kernel]]
        hit = inner >= 0
        accumulate(exclusive, inner[hit], (ops.end[sl] - ops.start[sl])[kernel[hit]])

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
    return Attribution(ranges=ranges, threads=threads, op_call=op_call, calls=order, calls_ops=calls_of,
                       stats=stats, lanes=lanes, warnings=warnings, calls_end=calls.end,
                       attributed_ns=int(round(float(exclusive.sum()))))


def _tighten(inner: np.ndarray, ids: np.ndarray, rng: np.ndarray, r_start, r_end, ties_to_later=False) -> None:
    """inner[ids] = rng where rng is tighter (starts later; at an equal start, ends earlier) than the
    range there now (or as tight, with `ties_to_later`); with repeated ids the tightest wins, and of
    equally tight ones the later."""
    if not ids.size:
        return
    current = inner[ids]
    has = current >= 0
    cur = np.maximum(current, 0)
    same_start = r_start[rng] == r_start[cur]
    ends_before = r_end[rng] <= r_end[cur] if ties_to_later else r_end[rng] < r_end[cur]
    tighter = ~has | (r_start[rng] > r_start[cur]) | (same_start & ends_before)
    ids, rng = ids[tighter], rng[tighter]
    if ids.size > 1 and np.bincount(ids).max() > 1:
        order = np.lexsort((-r_end[rng], r_start[rng]))      # ascending tightness: the last write wins
        ids, rng = ids[order], rng[order]
    inner[ids] = rng


class CallsOps:
    """The GPU ops of each call: usually one; a CUDA-graph launch makes many (then ops sorted by call)."""

    def __init__(self, op_call: np.ndarray, n_calls: int):
        self.op_call, self.n_calls = op_call, n_calls
        self.counts = np.zeros(n_calls, INDEX)                   # GPU ops per call
        for sl in spans(op_call.size):
            oc = op_call[sl]
            accumulate(self.counts, oc[oc >= 0])
        self.single = int(self.counts.max(initial=0)) <= 1       # no call launched two ops
        self._order = self._op_of = self._first = None

    def first_op(self, op: np.ndarray) -> np.ndarray:
        """Per op (indexes): whether it is the first op of its call (one 'launch' per call)."""
        if self.single:
            return self.op_call[op] >= 0
        if self._first is None:
            first = np.zeros(self.op_call.size, bool)
            launched = np.flatnonzero(self.op_call >= 0)
            seen = np.full(self.n_calls, -1, np.int64)
            seen[self.op_call[launched[::-1]]] = launched[::-1]     # the first op of each call is written last
            first[seen[seen >= 0]] = True
            self._first = first
        return self._first[op]

    def expand(self, group: np.ndarray, call: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(group, op) pairs for (group, call) pairs."""
        if self.single:
            if self._op_of is None:
                self._op_of = np.full(self.n_calls, -1, INDEX)
                for sl in spans(self.op_call.size):
                    oc = self.op_call[sl]
                    mine = np.flatnonzero(oc >= 0)
                    self._op_of[oc[mine]] = mine + sl.start
            op = self._op_of[call]
            keep = op >= 0
            return np.compress(keep, group), np.compress(keep, op)
        if self._order is None:
            launched = np.flatnonzero(self.op_call >= 0)
            self._order = launched[np.argsort(self.op_call[launched], kind="stable")]
            self._starts = np.cumsum(self.counts, dtype=np.int64) - self.counts
        counts = self.counts[call].astype(np.int64)
        g = np.repeat(group, counts)
        offset = np.repeat(self._starts[call] - np.cumsum(counts) + counts, counts)
        return g, self._order[np.arange(g.size) + offset]


class CallOrder:
    """The API calls on threads with ranges, in (thread, start) order, with their ranges."""

    def __init__(self, order, sorted_key, t0, lane_at, inner, startend):
        self.order = order            # call indexes
        self.sorted_key = sorted_key  # packed (thread, start) of order
        self.t0 = t0
        self.lane_at = lane_at        # per lane rank: per call, its innermost push/pop range (index into lanes.pp), -1
        self.inner = inner            # per call: its tightest range (push/pop or start/end), -1
        self.startend = startend      # the start/end ranges that take part

    @classmethod
    def of(cls, calls, threads, live_start, live_end, lanes, n_calls) -> "CallOrder":
        small = np.int16 if threads.size < 1 << 15 else np.int64
        thread = np.empty(n_calls, small)
        for sl in spans(n_calls):
            thread[sl] = index_in(calls.thread[sl], threads)
        order = thread_order(thread, calls.start, threads.size)
        lows, highs = [], []
        gathered = (t[order[sl]] for sl in spans(order.size) for t in (calls.start, calls.end))
        for times in itertools.chain((live_start, live_end), gathered):
            if times.size:
                lows.append(int(times.min()))
                highs.append(int(times.max()))
        t0, t1 = min(lows, default=0), max(highs, default=0)
        if t1 - t0 >= 1 << TIME_BITS:
            raise ValueError("the trace spans more than 19 hours")  # packed keys would overflow
        sorted_key = np.empty(order.size, np.int64)
        for sl in spans(order.size):
            sorted_key[sl] = packed(thread[order[sl]], calls.start[order[sl]], t0)
        self = cls(order, sorted_key, t0, [], np.full(n_calls, -1, INDEX), np.zeros(0, np.int64))
        self._thread = thread
        return self

    def find_innermost(self, calls, lanes: Lanes, r_start, r_end) -> None:
        """lane_at and inner: each call's innermost push/pop range per lane, and its tightest."""
        ranks = int(lanes.thread_lanes[:, 1].max(initial=0))
        self.lane_at = [np.full(self.inner.size, -1, INDEX) for _ in range(ranks)]
        for sl in spans(self.order.size):
            ids = self.order[sl]
            th = self._thread[ids]
            start, end = calls.start[ids], calls.end[ids]
            for rank in range(ranks):
                has = np.flatnonzero(lanes.thread_lanes[th, 1] > rank)
                at = innermost(lanes, lanes.thread_lanes[th[has], 0] + rank, start[has], end[has])
                self.lane_at[rank][ids[has]] = at
                hit = at >= 0
                if rank == 0:
                    self.inner[ids[has[hit]]] = lanes.pp[at[hit]]
                else:
                    _tighten(self.inner, ids[has[hit]], lanes.pp[at[hit]], r_start, r_end)
        del self._thread

    def take_tighter(self, tightest: np.ndarray, r_start, r_end) -> None:
        """inner = the tightest start/end range of a call where it is tighter than its push/pop one."""
        for sl in spans(self.inner.size):
            se = tightest[sl]
            mine = np.flatnonzero(se >= 0)
            _tighten(self.inner[sl], mine, se[mine], r_start, r_end)

    def inside(self, rs: np.ndarray, ranges: Ranges, call_end: np.ndarray, t0: int):
        """Chunks of (position in rs, call) for every call made inside range rs[i] on its thread: a
        slice of the calls in (thread, start) order, less calls that end after the range."""
        lo = np.searchsorted(self.sorted_key, packed(ranges.thread[rs], ranges.start[rs], t0), side="left")
        hi = np.searchsorted(self.sorted_key, packed(ranges.thread[rs], ranges.end[rs], t0), side="right")
        counts = np.maximum(hi - lo, 0)
        ends = np.cumsum(counts)
        r_end = ranges.end[rs]
        for sl in spans(int(ends[-1]) if ends.size else 0):
            q = np.arange(sl.start, sl.stop)
            g = np.searchsorted(ends, q, side="right")
            ids = self.order[lo[g] + (q - (ends[g] - counts[g]))]
            keep = call_end[ids] <= r_end[g]
            yield (g, ids) if keep.all() else (np.compress(keep, g), np.compress(keep, ids))


def thread_order(call_thread: np.ndarray, start: np.ndarray, n_threads: int) -> np.ndarray:
    """The calls with a thread (call_thread >= 0) in (thread, start) order, ties in table order: a
    counting sort on the thread alone when each thread's calls are in time order already (nsys writes
    the runtime table in time order), else a sort on both."""
    sizes = np.zeros(n_threads, np.int64)
    for sl in spans(call_thread.size):
        th = call_thread[sl]
        accumulate(sizes, th[th >= 0])
    if n_threads == 1 and sizes[0] == call_thread.size:
        order = np.arange(call_thread.size, dtype=INDEX)
    else:
        order = np.empty(int(sizes.sum()), INDEX)
        filled = np.cumsum(sizes) - sizes                  # where each thread's next call goes
        for sl in spans(call_thread.size):
            th = call_thread[sl]
            for t in np.unique(th[th >= 0]).tolist():
                mine = np.flatnonzero(th == t)
                order[filled[t]:filled[t] + mine.size] = mine + sl.start
                filled[t] += mine.size
    if _in_time_order(order, call_thread, start):
        return order
    mine = np.flatnonzero(call_thread >= 0)
    return mine[np.lexsort((start[mine], call_thread[mine]))].astype(INDEX)


def _in_time_order(order, call_thread, start) -> bool:
    """Whether each thread's calls in `order` start in time order."""
    last_start, last_thread = None, None
    for sl in spans(order.size):
        s, th = start[order[sl]], call_thread[order[sl]]
        if not ((s[1:] >= s[:-1]) | (th[1:] != th[:-1])).all():
            return False
        if last_thread is not None and th[0] == last_thread and s[0] < last_start:
            return False
        last_start, last_thread = s[-1], th[-1]
    return True


def _self_overlapping(ops) -> np.ndarray | None:
    """Per op: a kernel on a stream where two kernels overlap in time (programmatic dependent
    launch, or a damaged trace); the union of intervals then differs from the sum of durations.
    None when no stream overlaps itself."""
    k = ops.kind == KERNEL
    n_kernels = int(np.count_nonzero(k))
    if n_kernels < 2:
        return None
    kernels = slice(0, n_kernels) if k[:n_kernels].all() else np.flatnonzero(k)   # readers put kernels first
    streams = distinct(ops.stream_key[kernels])
    bad = _overlapping_streams(ops, kernels, n_kernels, streams)
    if not bad:
        return None
    out = np.zeros(len(ops), bool)
    out[k] = np.isin(ops.stream_key[k], streams[bad])
    return out


def _overlapping_streams(ops, kernels, n, streams) -> list[int]:
    """Indexes (into streams) of the streams on which a kernel starts before an earlier one ends.
    Kernels come in start order (nsys lists them so; checked): a running end per stream, chunk by
    chunk; else each stream's kernels sorted."""
    reach = np.full(streams.size, np.iinfo(np.int64).min, np.int64)    # furthest end so far, per stream
    bad, last_start = set(), np.iinfo(np.int64).min
    for sl in spans(n):
        rows = slice(kernels.start + sl.start, kernels.start + sl.stop) if isinstance(kernels, slice) else kernels[sl]
        s, e = ops.start[rows], ops.end[rows]
        if s[0] < last_start or not (s[1:] >= s[:-1]).all():
            return _overlapping_streams_sorted(ops, kernels, streams)
        last_start = s[-1]
        stream = index_in(ops.stream_key[rows], streams)
        for i in np.unique(stream).tolist() if streams.size > 1 else [0]:
            mine = np.flatnonzero(stream == i) if streams.size > 1 else slice(None)
            ends = np.maximum.accumulate(e[mine])
            np.maximum(ends, reach[i], out=ends)
            if s[mine][0] < reach[i] or (s[mine][1:] < ends[:-1]).any():
                bad.add(i)
            reach[i] = ends[-1]
    return sorted(bad)


def _overlapping_streams_sorted(ops, kernels, streams) -> list[int]:
    k = np.arange(ops.start.size)[kernels]
    _, stream = dense_index(ops.stream_key[k])
    order = np.lexsort((ops.start[k], stream))
    s, e, stream = ops.start[k][order], ops.end[k][order], stream[order]
    bounds = np.r_[0, np.flatnonzero(stream[1:] != stream[:-1]) + 1, stream.size]
    return [int(stream[lo]) for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist())
            if (s[lo + 1:hi] < np.maximum.accumulate(e[lo:hi])[:-1]).any()]


def _group_offset(key: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per element, an offset that lifts each group (runs of equal key) above all earlier groups."""
    first = np.r_[True, key[1:] != key[:-1]]
    group = np.cumsum(first) - 1
    width = np.zeros(int(group[-1]) + 1 if group.size else 0, np.int64)
    np.maximum.at(width, group, values + 1)
    return (np.cumsum(width) - width)[group]


class _Totals:
    """Per group (range): kernel ns and counts, launches, first/last op, streams of its kernels, and
    how many of them ran on a stream that overlaps itself; summed chunk by chunk."""
    SUMS = ("inclusive", "kernels", "gpu_ops", "launches", "overlap")
    LOWEST = ("first", "stream_lo")
    HIGHEST = ("last", "stream_hi")

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

    def add(self, group: np.ndarray, op: np.ndarray, ops, calls_of: CallsOps, overlap) -> None:
        """Adds the ops `op` to their groups."""
        kernel = ops.kind[op] == KERNEL
        g_k, op_k = np.compress(kernel, group), np.compress(kernel, op)
        accumulate(self.inclusive, g_k, ops.end[op_k] - ops.start[op_k])
        accumulate(self.kernels, g_k)
        accumulate(self.gpu_ops, group)
        accumulate(self.launches, group if calls_of.single else np.compress(calls_of.first_op(op), group))
        if overlap is not None:
            accumulate(self.overlap, np.compress(overlap[op], group))
        np.minimum.at(self.first, group, ops.start[op])
        np.maximum.at(self.last, group, ops.end[op])
        streams = ops.stream_key[op_k]
        np.minimum.at(self.stream_lo, g_k, streams)
        np.maximum.at(self.stream_hi, g_k, streams)

    def roll_up(self, lanes: Lanes) -> None:
        """Totals of each range's subtree: children into parents, deepest level first."""
        for level in range(int(lanes.depth.max(initial=0)), 0, -1):
            sel = np.flatnonzero(lanes.depth == level)
            up = lanes.parent[sel]
            for name in self.SUMS:
                np.add.at(getattr(self, name), up, getattr(self, name)[sel])
            for name in self.LOWEST:
                np.minimum.at(getattr(self, name), up, getattr(self, name)[sel])
            for name in self.HIGHEST:
                np.maximum.at(getattr(self, name), up, getattr(self, name)[sel])

    def store(self, rows: np.ndarray, other: "_Totals") -> None:
        for name in self.SUMS + self.LOWEST + self.HIGHEST:
            getattr(self, name)[rows] = getattr(other, name)


def _union_busy(ops, inside: tuple[np.ndarray, np.ndarray], n_groups: int) -> np.ndarray:
    """Per group, the length of the union of its kernels' intervals: sorted by start, each kernel
    adds what reaches past the furthest end before it in the same group."""
    g, ids = inside
    kg = ops.kind[ids] == KERNEL
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
