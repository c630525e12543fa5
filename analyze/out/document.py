"""The analysis of a trace as one JSON document: the contract of `--json`, `metrics.json` and the report.

Schema `dsocr-analysis/1`. Units are in the key names (`_ns` integer nanoseconds on the trace clock,
`_pct` percent, `_frac` fraction in [0, 1], `_flops` and `_bytes` counts, `_per_s` rates); a number that
does not exist is `null`, never NaN; every entry of a list has the same keys.

    schema, trace (path as given), trace_info {path, format, source, exporter_version, manifest_source}
    totals {kernels, kernel_ns, attributed_ns, attributed_frac, gpu_ops, ranges, first_op_ns, last_op_ns}
    ranges [one per stage or range name: see RANGE_KEYS, plus `measured` (Nsight Compute's counters, or null:
            analyze.metrics.measured.BLOCK_KEYS)]
    steps [one per decode step: see STEP_KEYS], step_summary {...}
    opportunities [up to three, ranked: see analyze.metrics.opportunities]
    workload, gpu, model_level, attention_policy, warnings, notes
Kept from before under their old names (documented as deprecated in the README): in each range
`tflops`, `mfu`, `gbs`, `mbu`, `intensity` (the busy-time values) and the top-level `model` (the
model-level numbers, = model_level).
"""
from __future__ import annotations

import math

import numpy as np

from dsocr_perf.analyze import accounting
from dsocr_perf.analyze.columns import filled, named_rows
from dsocr_perf.analyze.metrics import efficiency
from dsocr_perf.analyze.metrics.flops import RATE_KEYS, stage_metrics
from dsocr_perf.analyze.tables import METRIC_SHARES, bare
from dsocr_perf.dsocr import stages as S

SCHEMA = "dsocr-analysis/1"
# The stage table: DeepSeek-OCR stages in pipeline order, children under their parent.
STAGE_TREE = ((S.PREPROCESS, None), (S.PREFILL, None), (S.SAM, S.PREFILL), (S.CLIP, S.PREFILL),
              (S.PROJECTOR, S.PREFILL), (S.LLM_PREFILL, S.PREFILL), (S.DECODE, None))
STAT_KEYS = ("name", "instances", "inclusive_ns", "exclusive_ns", "busy_ns", "span_ns", "cpu_ns", "kernels", "gpu_ops",
             "launches")
RANGE_KEYS = STAT_KEYS + ("stage", "parent", "depth", "inclusive_frac", "wall_ns", "idle_ns", "idle_frac",
                          "gpu_idle_ns", "idle_causes_ns", "api_calls", "kernel_launches", "host_syncs", "memcpy",
                          "memsets", "flops", "bytes") + RATE_KEYS + METRIC_SHARES + ("bound",)
STEP_KEYS = ("request", "step", "kv_length", "start_ns", "wall_ns", "busy_ns", "idle_ns", "idle_causes_ns", "kernels",
             "gpu_ops", "launches", "kernel_launches", "host_syncs", "memcpy", "api_calls")
STEP_NAMES = frozenset({S.DECODE_STEP, f"{S.DOMAIN}:{S.DECODE_STEP}"})
STEP_COUNTS = ("wall_ns", "busy_ns", "idle_ns", "kernels", "gpu_ops", "launches", "kernel_launches", "host_syncs",
               "api_calls")
SLOW_STEP = 1.5          # a step above 1.5x the median wall time is flagged
SHIFT_SHARE = 0.2        # a level shift: mean wall time before and after differs by 20% of the median
MIN_SEGMENT = 5


def document(trace, which: str = "stages", *, peak_tflops=None, peak_gbs=None, policy=None, ncu=None) -> dict:
    """`ncu`: Nsight Compute CSVs for the `measured` block of each entry (analyze.out.measured.NcuInput); None:
    those beside the trace (NAME.ncu.csv, ...), False: none."""
    from dsocr_perf.analyze.metrics.opportunities import opportunities
    from dsocr_perf.analyze.out.measured import add_measured

    all_rows = trace.table("stages").to_pylist()
    rows = select(all_rows, which)
    metric_rows, extras = stage_metrics(rows, trace.manifest, trace.gpu.name, peak_tflops=peak_tflops,
                                        peak_gbs=peak_gbs, trace_bandwidth_Bps=trace.gpu.memory_bandwidth_Bps,
                                        total_memory_bytes=trace.gpu.total_memory, policy=policy)
    peaks = extras["gpu"]
    ridge = (peaks["peak_tflops"] * 1e3 / peaks["peak_gbs"]) if peaks.get("peak_tflops") and peaks.get("peak_gbs") \
        else None
    totals = trace.totals
    span = totals.last_ns - totals.first_ns if totals.first_ns is not None else 0
    busy = trace.tables.gpu_busy_ns()
    ranges = [range_entry(r, m, totals.kernel_ns, ridge) for r, m in zip(rows, metric_rows)]
    steps = decode_steps(trace)
    doc = {
        "schema": SCHEMA,
        "trace": str(trace.path),
        "trace_info": {"path": str(trace.path), "format": trace.format, "source": trace.source,
                       "exporter_version": trace.version, "manifest_source": trace.manifest_source},
        "totals": {"kernels": totals.kernels, "kernel_ns": totals.kernel_ns, "attributed_ns": totals.attributed_ns,
                   "attributed_frac": _frac(totals.attributed_ns, totals.kernel_ns), "gpu_ops": totals.gpu_ops,
                   "gpu_op_ns": totals.gpu_op_ns, "ranges": totals.ranges, "first_op_ns": totals.first_ns,
                   "last_op_ns": totals.last_ns, "gpu_span_ns": span, "gpu_busy_ns": busy,
                   "gpu_busy_frac": _frac(busy, span)},
        "ranges": ranges,
        "steps": steps,
        "step_summary": step_summary(steps, trace.manifest,
                                     sum(r["wall_ns"] or 0 for r in all_rows if bare(r["name"]) == S.DECODE)),
        "workload": extras["workload"],
        "gpu": {**peaks, "sm_count": trace.gpu.sm_count, "clock_hz": trace.gpu.clock_hz,
                "memory_bandwidth_Bps": trace.gpu.memory_bandwidth_Bps, "total_memory_bytes": trace.gpu.total_memory},
        "model_level": extras["model"],
        "model": extras["model"],
        "attention_policy": extras["attention_policy"],
        "warnings": list(trace.warnings),
        "notes": extras["messages"],
    }
    stage_index = {r["stage"]: r for r in _with_metrics(all_rows, rows, ranges, trace, policy, peak_tflops, peak_gbs)}
    doc["opportunities"] = opportunities(stage_index, doc, trace)
    add_measured(doc, ncu, trace, policy)
    return {k: v if k == "steps" else clean(v) for k, v in doc.items()}


def select(rows: list[dict], which: str) -> list[dict]:
    """The rows a table shows: `all` names; else the DeepSeek-OCR stages present (tree order), else
    the top-level ranges."""
    if which == "all":
        return rows
    by_stage: dict[str, list[dict]] = {}
    for row in rows:
        if bare(row["name"]) in dict(STAGE_TREE):
            by_stage.setdefault(bare(row["name"]), []).append(row)
    if any(s in by_stage for s in S.REPORTED_STAGES):
        return [r for stage, _ in STAGE_TREE for r in by_stage.get(stage, [])]
    return [r for r in rows if r["depth"] == 0]


def range_entry(row: dict, metrics: dict, kernel_ns: int, ridge: float | None) -> dict:
    stage = bare(row["name"])
    parent = dict(STAGE_TREE).get(stage)
    causes = {c: int(row[f"idle_{c}_ns"]) for c in accounting.CAUSES}
    entry = {k: row[k] for k in STAT_KEYS}
    entry.update(stage=stage, parent=parent, depth=1 if parent else 0,
                 inclusive_frac=_frac(row["inclusive_ns"], kernel_ns), wall_ns=row["wall_ns"], idle_ns=row["idle_ns"],
                 idle_frac=_frac(row["idle_ns"], row["wall_ns"]), gpu_idle_ns=row["gpu_idle_ns"], idle_causes_ns=causes,
                 api_calls=row["api_calls"], kernel_launches=row["kernel_launches"], host_syncs=row["host_syncs"],
                 memcpy={d: row[f"memcpy_{d}"] for d in accounting.DIRECTIONS}, memsets=row["memsets"],
                 flops=metrics["flops"], bytes=metrics["bytes"])
    entry.update({k: metrics.get(k) for k in RATE_KEYS})
    entry.update({k: row.get(k) for k in METRIC_SHARES})
    entry["bound"] = efficiency.limiter(entry, ridge)
    return entry


def _with_metrics(all_rows, rows, ranges, trace, policy, peak_tflops, peak_gbs) -> list[dict]:
    """Entries for every DeepSeek-OCR stage (the opportunities look at stages a table may not show)."""
    shown = {r["name"] for r in rows}
    extra = [r for r in all_rows if r["name"] not in shown and bare(r["name"]) in (S.REQUEST, S.DECODE_STEP)]
    if not extra:
        return ranges
    metric_rows, extras = stage_metrics(extra, trace.manifest, trace.gpu.name, peak_tflops=peak_tflops,
                                        peak_gbs=peak_gbs, trace_bandwidth_Bps=trace.gpu.memory_bandwidth_Bps,
                                        total_memory_bytes=trace.gpu.total_memory, policy=policy)
    return ranges + [range_entry(r, m, trace.totals.kernel_ns, None) for r, m in zip(extra, metric_rows)]


# ------------------------------------------------------------------------------------ decode steps

def decode_steps(trace) -> list[dict]:
    """One entry per decode_step range instance, in time order; step = its position in its decode
    range; request = the request range that holds it; kv_length from the manifest. Values are plain
    Python numbers already (the document's `clean` need not walk thousands of steps)."""
    stats = trace.table("range_stats")
    rows = named_rows(stats.column("name"), STEP_NAMES)
    if not rows.size:
        return []
    ranges = trace.table("ranges_core")
    rid = stats.column("range_id").to_numpy()[rows]
    start = ranges.column("start_ns").to_numpy()[rid]
    parent = filled(ranges.column("parent_id"), -1)[rid]
    order = np.lexsort((start, parent))
    position = np.empty(rid.size, np.int64)
    first = np.r_[True, parent[order][1:] != parent[order][:-1]]
    position[order] = np.arange(rid.size) - np.maximum.accumulate(np.where(first, np.arange(rid.size), 0))
    by_time = np.argsort(start, kind="stable")
    start = start[by_time]
    requests = _request_of(trace, ranges, start)
    kv = _kv_lengths(trace.manifest)
    take = rows[by_time]
    column = {c: stats.column(c).to_numpy()[take].tolist() for c in
              (*STEP_COUNTS, *(f"idle_{c}_ns" for c in accounting.CAUSES), *(f"memcpy_{d}" for d in accounting.DIRECTIONS))}
    causes = [(c, column[f"idle_{c}_ns"]) for c in accounting.CAUSES]
    memcpy = [(d, column[f"memcpy_{d}"]) for d in accounting.DIRECTIONS]
    out = []
    for i, (step, req, t0) in enumerate(zip(position[by_time].tolist(), requests, start.tolist())):
        lengths = kv.get(req, kv.get(None, []))
        out.append({
            "request": req, "step": step, "kv_length": lengths[step] if 0 <= step < len(lengths) else None,
            "start_ns": t0, "wall_ns": column["wall_ns"][i], "busy_ns": column["busy_ns"][i],
            "idle_ns": column["idle_ns"][i],
            "idle_causes_ns": {c: values[i] for c, values in causes},
            "kernels": column["kernels"][i], "gpu_ops": column["gpu_ops"][i], "launches": column["launches"][i],
            "kernel_launches": column["kernel_launches"][i], "host_syncs": column["host_syncs"][i],
            "memcpy": {d: values[i] for d, values in memcpy},
            "api_calls": column["api_calls"][i]})
    return out


def _request_of(trace, ranges, times: np.ndarray) -> list:
    """The request index (its position among request ranges, in time order) holding each time."""
    names = {n for n in trace.range_names() if bare(n) == S.REQUEST}
    if not names:
        return [None] * times.size
    rows = named_rows(ranges.column("name"), names)
    rs = ranges.column("start_ns").to_numpy()[rows]
    re_ = ranges.column("end_ns").to_numpy()[rows]
    order = np.argsort(rs, kind="stable")
    rs, re_ = rs[order], re_[order]
    k = np.searchsorted(rs, times, side="right") - 1
    inside = (k >= 0) & (times <= re_[np.maximum(k, 0)])
    return [i if ok else None for i, ok in zip(k.tolist(), inside.tolist())]


def _kv_lengths(manifest) -> dict:
    """request index (None: any) -> decode KV lengths, from the manifest's pages / workload."""
    out: dict = {}
    if not isinstance(manifest, dict):
        return out
    workload = manifest.get("workload")
    if isinstance(workload, dict) and _int_list(workload.get("decode_kv_lengths")):
        out[None] = _int_list(workload.get("decode_kv_lengths"))
    for page in manifest.get("pages") or [] if isinstance(manifest.get("pages"), list) else []:
        if isinstance(page, dict) and isinstance(page.get("request"), int) and isinstance(page.get("workload"), dict):
            lengths = _int_list(page["workload"].get("decode_kv_lengths"))
            if lengths:
                out[page["request"]] = lengths
    return out


def _int_list(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) and all(isinstance(v, int) for v in value) else []


def step_summary(steps: list[dict], manifest, decode_wall_ns: int = 0) -> dict:
    """Mean and median per step, slow steps, a level shift, decode tokens/s (measured under tracing): steps over
    the `decode` ranges' wall time (the denominator of the opportunities' tokens/s), or over the steps' own wall
    time when there is no `decode` range."""
    keys = ("steps", "requests", "mean_wall_ns", "median_wall_ns", "p90_wall_ns", "mean_busy_ns", "median_busy_ns",
            "slow_steps", "slow_step_requests", "level_shift", "tokens_per_s_under_tracing")
    if not steps:
        return dict.fromkeys(keys) | {"steps": 0, "requests": 0, "slow_steps": [], "slow_step_requests": []}
    wall = np.array([s["wall_ns"] for s in steps], np.float64)
    busy = np.array([s["busy_ns"] for s in steps], np.float64)
    median = float(np.median(wall))
    slow = [s for s in steps if s["wall_ns"] > SLOW_STEP * median]
    # with several requests the shift is looked for in the mean wall per step number (the same KV length)
    requests = len({s["request"] for s in steps})
    by_step: dict[int, list[int]] = {}
    for s in steps:
        by_step.setdefault(s["step"], []).append(s["wall_ns"])
    step_ids = sorted(by_step)
    per_step = np.array([np.mean(by_step[i]) for i in step_ids]) if requests > 1 else wall
    return {"steps": len(steps), "requests": requests, "mean_wall_ns": round(float(wall.mean())), "median_wall_ns": round(median),
            "p90_wall_ns": round(float(np.percentile(wall, 90))), "mean_busy_ns": round(float(busy.mean())),
            "median_busy_ns": round(float(np.median(busy))), "slow_steps": [s["step"] for s in slow],
            "slow_step_requests": [s["request"] for s in slow],
            "level_shift": level_shift(step_ids if per_step is not wall else [s["step"] for s in steps], per_step,
                                       median),
            "tokens_per_s_under_tracing": len(steps) / ((decode_wall_ns or wall.sum()) / 1e9) if wall.sum() else None}


def level_shift(step_ids: list[int], wall: np.ndarray, median: float) -> dict | None:
    """The split that best separates two levels of step time, when the levels differ by more than
    SHIFT_SHARE of the median (e.g. steps 0-32 at 43.8 ms, 33-127 at 25.9 ms). `wall` is in step order:
    one page's steps, or the mean over requests per step number."""
    n = wall.size
    if n < 2 * MIN_SEGMENT:
        return None
    csum = np.cumsum(wall)
    k = np.arange(MIN_SEGMENT, n - MIN_SEGMENT + 1)
    before = csum[k - 1] / k
    after = (csum[-1] - csum[k - 1]) / (n - k)
    # the split that explains most of the variance (between-segment sum of squares)
    score = k * (n - k) * (before - after) ** 2
    best = int(np.argmax(score))
    if abs(before[best] - after[best]) < SHIFT_SHARE * median:
        return None
    return {"at_step": int(step_ids[k[best]]), "before_mean_ns": round(float(before[best])),
            "after_mean_ns": round(float(after[best]))}


# ------------------------------------------------------------------------------------------ helpers

def _frac(part, whole) -> float | None:
    return part / whole if part is not None and whole else None


def clean(value):
    """NaN and infinities become null; NumPy scalars plain numbers (the JSON never holds NaN)."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


