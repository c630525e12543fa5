"""Kernels launched inside each stage range of an nsys export (standard library only: the capture side has no
DuckDB): what an ncu kernel-replay run of the same workload will profile, for its cost estimate.

A kernel belongs to the runtime or driver call that launched it (same correlation id and process), and that call
to the stage range that encloses it on the same thread (the rule of NVIDIA's `nsys stats` NVTX reports). The
stage ranges counted here (sam, clip, projector, llm_prefill, decode_step) never overlap one another on a thread,
so each launch falls into at most one: a binary search over their sorted starts finds it.
"""
from __future__ import annotations

import bisect
import json
import sqlite3
from collections import defaultdict
from pathlib import Path

from dsocr_perf.launch.ncu import STAGES

RANGES = f"""
SELECT e.globalTid, e.start, e."end", COALESCE(e.text, s.value) AS name
FROM NVTX_EVENTS e LEFT JOIN StringIds s ON s.id = e.textId
WHERE e.eventType = 59 AND COALESCE(e.text, s.value) IN ({", ".join("?" * len(STAGES))})
ORDER BY e.globalTid, e.start"""
# globalPid = globalTid with the low 24 bits (the thread id) cleared.
LAUNCHES = """
SELECT r.globalTid, r.start
FROM CUPTI_ACTIVITY_KIND_KERNEL k
JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = k.correlationId AND (r.globalTid & -16777216) = k.globalPid"""


def stage_kernel_counts(sqlite: Path) -> dict[str, list[int]]:
    """{stage: [kernels of its 1st instance, 2nd, ...]} in time order per thread."""
    con = sqlite3.connect(f"file:{sqlite}?mode=ro", uri=True)
    try:
        ranges = con.execute(RANGES, STAGES).fetchall()
        by_thread: dict[int, list[tuple[int, int, int]]] = defaultdict(list)   # tid -> (start, end, range index)
        for i, (tid, start, end, _) in enumerate(ranges):
            by_thread[tid].append((start, end, i))
        starts = {tid: [r[0] for r in rs] for tid, rs in by_thread.items()}
        kernels = [0] * len(ranges)
        for tid, launch in con.execute(LAUNCHES):
            rs = by_thread.get(tid)
            if not rs:
                continue
            j = bisect.bisect_right(starts[tid], launch) - 1
            if j >= 0 and launch <= rs[j][1]:
                kernels[rs[j][2]] += 1
    finally:
        con.close()
    counts: dict[str, list[int]] = defaultdict(list)
    for (_, _, _, name), n in zip(ranges, kernels, strict=True):
        counts[name].append(n)
    return dict(counts)


def kernels_per_instance(sqlite: Path, manifest: Path, preset: str, view_batches: int) -> dict[str, float] | None:
    """Mean kernels per instance of each stage, from an export of the same preset and view layout (its manifest
    beside it says); None when there is no such export or it cannot be read."""
    try:
        m = json.loads(manifest.read_text())
        same = m["model"]["preset"] == preset and len(m["workload"]["views"]) == view_batches
        if not (same and sqlite.is_file()):
            return None
        counts = stage_kernel_counts(sqlite)
    except (OSError, ValueError, KeyError, TypeError, sqlite3.Error):
        return None
    if not all(counts.get(s) for s in STAGES):
        return None
    return {s: sum(n) / len(n) for s, n in counts.items()}
