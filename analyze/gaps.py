"""`gpu_gaps`: every interval in which a process's GPU device runs none of its operations, between
its first and last operation there (the intervals NVIDIA's `nsys analyze` rule gpu_gaps scans), with
what the host thread that launched the operation ending the gap was doing meanwhile.

Per gap: how long that thread spent in synchronising calls, memory copies, launches, other CUDA
calls and outside CUDA (host), the dominant one as `cause`, and the range and stage of the call
that launched the next operation (where the GPU was waiting for the host).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from dsocr_perf.analyze import accounting as AC

GAP_CAUSES = ("sync", "memcpy", "launch", "other_api", "host")
KIND_TO_CAUSE = {AC.SYNC: 0, AC.COPY: 1, AC.LAUNCH: 2, AC.SET: 2, AC.OTHER: 3}


def gpu_gaps(raw, att, facts, stage_names) -> pa.Table:
    ops, calls = raw.ops, raw.calls
    device = ops.device
    key = np.stack([ops.process, device], axis=1) if len(ops) else np.zeros((0, 2), np.int64)
    pieces = []
    for process, dev in np.unique(key, axis=0).tolist() if len(ops) else []:
        mine = np.flatnonzero((ops.process == process) & (device == dev))
        order = mine[np.argsort(ops.start[mine], kind="stable")]
        s, e = ops.start[order], ops.end[order]
        reach = np.maximum.accumulate(e)
        at = np.flatnonzero(s[1:] > reach[:-1])
        pieces.append((process, dev, reach[at], s[at + 1], order[at + 1]))
    if not pieces:
        starts = ends = nxt = np.zeros(0, np.int64)
        process = dev = np.zeros(0, np.int64)
    else:
        starts = np.concatenate([p[2] for p in pieces])
        ends = np.concatenate([p[3] for p in pieces])
        nxt = np.concatenate([p[4] for p in pieces])
        process = np.concatenate([np.full(p[2].size, p[0]) for p in pieces])
        dev = np.concatenate([np.full(p[2].size, p[1]) for p in pieces])
    call = att.op_call[nxt] if nxt.size else nxt
    spent = _thread_activity(calls, facts.kind, call, starts, ends)
    total = ends - starts
    spent[:, 4] = np.maximum(0, total - spent[:, :4].sum(axis=1))
    cause = np.argmax(spent, axis=1) if total.size else np.zeros(0, np.int64)
    has_call = call >= 0
    c = np.maximum(call, 0)
    inner = np.where(has_call, facts.inner[c], -1) if len(calls) else np.full(call.size, -1)
    table = {"gap_id": np.arange(total.size, dtype=np.int64),
             "pid": process & ((1 << 24) - 1), "device": dev, "start_ns": starts, "end_ns": ends, "dur_ns": total,
             "next_op_id": nxt,
             "tid": pa.array(np.where(has_call, calls.tid_of(c) if len(calls) else 0, 0), pa.int64(), mask=~has_call),
             "range_id": pa.array(np.maximum(inner, 0), pa.int64(), mask=inner < 0),
             "stage": stage_names(inner),
             "cause": pa.DictionaryArray.from_arrays(pa.array(cause.astype(np.int32)), pa.array(GAP_CAUSES))}
    for i, name in enumerate(GAP_CAUSES):
        table[f"{name}_ns"] = spent[:, i]
    return pa.table(table)


def _thread_activity(calls, kind, call, starts, ends) -> np.ndarray:
    """Per gap: ns the launching thread of its next op spent in each cause's calls during the gap."""
    spent = np.zeros((starts.size, len(GAP_CAUSES)), np.int64)
    if not len(calls) or not starts.size:
        return spent
    has = call >= 0
    gap_thread = np.where(has, calls.thread[np.maximum(call, 0)], -1)
    cause_of_kind = np.array([KIND_TO_CAUSE[k] for k in range(len(AC.CALL_KINDS))], np.int64)
    for thread in np.unique(gap_thread[has]):
        gaps = np.flatnonzero(gap_thread == thread)
        mine = np.flatnonzero(calls.thread == thread)
        mine = mine[np.argsort(calls.start[mine], kind="stable")]
        cs, ce = calls.start[mine], np.maximum.accumulate(calls.end[mine])   # nested calls: outer ones cover
        lo = np.searchsorted(ce, starts[gaps], side="right")                   # first call ending after the gap starts
        hi = np.searchsorted(cs, ends[gaps], side="left")                      # calls starting before it ends
        counts = np.maximum(hi - lo, 0)
        g = np.repeat(np.arange(gaps.size), counts)
        offset = np.repeat(lo - np.cumsum(counts) + counts, counts)
        idx = np.arange(g.size) + offset
        overlap = np.minimum(calls.end[mine][idx], ends[gaps][g]) - np.maximum(cs[idx], starts[gaps][g])
        overlap = np.maximum(overlap, 0)
        cause = cause_of_kind[kind[mine][idx]]
        for i in range(4):
            sel = cause == i
            spent[gaps, i] += np.bincount(g[sel], weights=overlap[sel], minlength=gaps.size).astype(np.int64)
    return spent
