"""`dsocr-analyze report TRACE --out DIR`: the report files people read, and the numbers behind them.

Files written to DIR (nothing is overwritten without --force):
  report.md               setup, workload, stage table (with FLOPs/MFU/MBU when the metrics apply),
                          dataset statistics, top kernels per stage, kernel category mix, decode step
                          time vs context length, warnings
  report.html             the same, self-contained (inline CSS and SVG plots, no network): stage
                          breakdown, decode step time over steps, category mix per stage, roofline
  stakeholder_summary.md  one page in plain words: where the GPU time goes, the biggest opportunity
  metrics.json            every number of the report (schema below)
  env.json                the analysis environment (python, packages, platform) and the capture's
  inputs.yaml             what went in: the trace (path, size, sha256), options, manifest pages
  assumptions.md          definitions and modelling assumptions behind the numbers

metrics.json schema ("schema": "dsocr-report/1"; times in integer ns on the trace clock, shares in
[0, 1], null where a number does not apply):
  trace        {path, source ('nsys'|'kineto'), size_bytes, sha256, exporter}
  generated_utc
  dsocr_stages true when the trace has DeepSeek-OCR stage ranges (else the stages are generic ranges)
  gpu          {name, sm_count, clock_hz, memory_bandwidth_Bps, total_memory, peak_tflops, peak_gbs,
                source, dtype}
  model        the manifest's model object (preset, weights, seed, dtype, attention), config left out
  workload     the manifest's workload object (mode, tile_grid, views, image_tokens, prompt_tokens,
               generated_tokens, decode_kv_lengths) or null
  totals       {kernel_ns (all kernels), gpu_op_ns (kernels+memcpy+memset), kernels, gpu_ops,
                first_ns, last_ns, wall_ns (first GPU op start -> last end), busy_share}
  stages       list, one per stage (DeepSeek-OCR stages in pipeline order, else the busiest
               top-level ranges): {name, stage, instances, inclusive_ns, exclusive_ns, busy_ns,
               span_ns, cpu_ns, kernels, gpu_ops, launches, share (inclusive_ns / totals.kernel_ns),
               gpu_idle_share (max(0, 1 - busy_ns / cpu_ns)), flops, bytes, tflops, mfu, gbs, mbu,
               intensity, bound} (analyze.metrics: tflops 1e12 FLOP/s over busy time, gbs 1e9 B/s,
               mfu and mbu in PERCENT of the peaks, intensity FLOP/byte, bound 'compute'|'memory')
  breakdown    list of {part, ns, share}: kernel time split into disjoint parts (leaf stages, the
               rest of prefill, outside every stage) that sum to totals.kernel_ns
  model_mfu    analyze.metrics' model level over prefill + decode: {stages, flops, bytes, busy_ns, tflops,
               mfu, gbs, mbu, intensity, bound}, or null
  top_kernels  {stage: [{name, short_name, label, category, instances, total_ns, share}]} (top 5 each;
               label = short_name, with the template's functor when two rows share a short name)
  category_mix {stage: {category: ns}} GPU-op time per kernel category, plus "(all)" for the trace
  decode       {steps: [{request, step, kv_length, gpu_ns, wall_ns, kernels}],
                by_step: [{step, kv_length, n, mean_gpu_ns, mean_wall_ns}],
                fit: {x ('kv_length'|'step'), slope_ns, intercept_ns, r2}} or null
  dataset      analyze.dataset.DatasetStats.to_dict() or null
  opportunity  {kind ('idle'|'headroom'|'largest'), stage, ns, share, text}
  warnings     list of strings
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import click

from dsocr_perf.analyze.errors import OutputError
from dsocr_perf.analyze.out.table import _fmt_ms, _fmt_num, _fmt_pct, _plural, _short, fit_sentence, stage_table
from dsocr_perf.analyze.paths import atomic_output, derived, is_input
from dsocr_perf.dsocr import stages

REPORT_SCHEMA = "dsocr-report/2"
FILES = ("report.md", "report.html", "stakeholder_summary.md", "metrics.json", "env.json", "inputs.yaml",
         "assumptions.md")
STAGE_ORDER = [stages.REQUEST, stages.PREPROCESS, stages.PREFILL, stages.SAM, stages.CLIP, stages.PROJECTOR,
               stages.LLM_PREFILL, stages.DECODE, stages.DECODE_STEP]
# Disjoint parts of a DeepSeek-OCR page's kernel time (prefill's children, then prefill's rest).
LEAVES = [stages.PREPROCESS, stages.SAM, stages.CLIP, stages.PROJECTOR, stages.LLM_PREFILL, stages.DECODE]
TOP_KERNELS = 5


# ---------------------------------------------------------------------------------------------- data

def bare(name: str) -> str:
    prefix = stages.DOMAIN + ":"
    return name[len(prefix):] if name.startswith(prefix) else name


def _rows(con, sql: str, params=None) -> list[dict]:
    cursor = con.execute(sql, params or [])
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def _file_facts(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size_bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _stage_names(table, con) -> tuple[list[str], set[str]]:
    """(names shown, all names of their nesting level): the DeepSeek-OCR stages present (in pipeline
    order), else the busiest ranges of the shallowest level that has at least two names."""
    by_bare = {}
    for name in table["name"].to_list():
        by_bare.setdefault(bare(name), name)
    known = [by_bare[s] for s in STAGE_ORDER if s in by_bare]
    if any(bare(n) in stages.REPORTED_STAGES for n in known):
        return known, set(known)
    # no DeepSeek-OCR stages: the shallowest nesting level with at least two range names (a single
    # top-level range wrapping everything says nothing), its 12 busiest names
    names_at = {}
    for row in _rows(con, "SELECT depth, name FROM ranges GROUP BY depth, name"):
        names_at.setdefault(row["depth"], set()).add(row["name"])
    level = next((d for d in sorted(k for k in names_at if k is not None) if len(names_at[d]) >= 2), None)
    top = names_at.get(level if level is not None else 0, set())
    import polars as pl

    busiest = table.filter(pl.col("name").is_in(list(top))).sort("inclusive_ns", descending=True).head(12)
    return busiest["name"].to_list(), top


def _breakdown(stage_rows: dict[str, dict], total_ns: int, is_dsocr: bool, level_ns: int = 0) -> list[dict]:
    """Disjoint parts of the kernel time. DeepSeek-OCR: leaf stages, rest of prefill, outside. Other
    traces: the shown ranges of one nesting level, the other ranges of that level (`level_ns` = all
    of them together), outside."""
    parts = []
    if is_dsocr:
        by_bare = {bare(n): r for n, r in stage_rows.items()}
        for leaf in LEAVES:
            if leaf in by_bare:
                parts.append((leaf, by_bare[leaf]["inclusive_ns"]))
        if stages.PREFILL in by_bare:
            children = sum(by_bare[s]["inclusive_ns"] for s in (stages.SAM, stages.CLIP, stages.PROJECTOR,
                                                                 stages.LLM_PREFILL) if s in by_bare)
            parts.append(("prefill (rest)", max(0, by_bare[stages.PREFILL]["inclusive_ns"] - children)))
        top = sum(by_bare[s]["inclusive_ns"] for s in (stages.PREPROCESS, stages.PREFILL, stages.DECODE) if s in by_bare)
    else:
        parts = [(n, r["inclusive_ns"]) for n, r in stage_rows.items()]
        shown = sum(ns for _, ns in parts)
        top = max(level_ns, shown)
        if top > shown:
            parts.append(("other ranges", top - shown))
    parts.append(("outside stages", max(0, total_ns - top)))
    return [{"part": p, "ns": int(ns), "share": (ns / total_ns if total_ns else None)} for p, ns in parts]


def _top_kernels(con, names: list[str]) -> dict[str, list[dict]]:
    if not names:
        return {}
    marks = ", ".join("?" for _ in names)
    rows = _rows(con, f"""
        -- per stage name: its kernels by total time (inclusive attribution), top {TOP_KERNELS}
        WITH per AS (
            SELECT r.name AS stage, k.name, any_value(k.short_name) AS short_name, any_value(k.category) AS category,
                   count(*)::BIGINT AS instances, sum(k.dur_ns)::BIGINT AS total_ns
            FROM kernel_ranges kr JOIN kernels k USING (op_id) JOIN ranges r USING (range_id)
            WHERE k.kind = 'kernel' AND r.name IN ({marks})
            GROUP BY r.name, k.name),
        ranked AS (
            SELECT *, total_ns / sum(total_ns) OVER (PARTITION BY stage) AS share,
                   row_number() OVER (PARTITION BY stage ORDER BY total_ns DESC, name) AS rank
            FROM per)
        SELECT stage, name, short_name, category, instances, total_ns, share FROM ranked
        WHERE rank <= {TOP_KERNELS} ORDER BY stage, rank""", names)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for row in rows:
        out[row.pop("stage")].append(row)
    for kernels in out.values():
        _label_duplicates(kernels)
    return out


_NOISE = {"int", "unsigned", "long", "char", "float", "double", "bool", "void", "const", "at", "native", "std", "array",
          "c10", "BFloat16", "Half", "lambda", "instance", "operator", "unnamed", "anonymous", "namespace", "T1", "T2",
          "T3", "T4", "detail", "memory", "TrivialOffsetCalculator", "cuda"}


def kernel_label(name: str, short_name: str | None) -> str:
    """short_name, plus the first meaningful identifier of the template arguments (the functor), which tells
    apart e.g. the several `vectorized_elementwise_kernel` instances."""
    import re

    base = short_name or name
    args = name.split("<", 1)[1] if "<" in name else ""
    for word in re.findall(r"[A-Za-z_]\w*", args):
        if word not in _NOISE and word != base and not word.isdigit():
            return f"{base} [{word}]"
    return base


def _label_duplicates(kernels: list[dict]) -> None:
    counts: dict[str, int] = {}
    for k in kernels:
        counts[k["short_name"] or k["name"]] = counts.get(k["short_name"] or k["name"], 0) + 1
    for k in kernels:
        base = k["short_name"] or k["name"]
        k["label"] = kernel_label(k["name"], k["short_name"]) if counts[base] > 1 else base


def _category_mix(con, names: list[str]) -> dict[str, dict[str, int]]:
    mix: dict[str, dict[str, int]] = {}
    if names:
        marks = ", ".join("?" for _ in names)
        for row in _rows(con, f"""
                -- GPU-op time per stage and kernel category (inclusive attribution)
                SELECT r.name AS stage, k.category, sum(k.dur_ns)::BIGINT AS ns
                FROM kernel_ranges kr JOIN kernels k USING (op_id) JOIN ranges r USING (range_id)
                WHERE r.name IN ({marks})
                GROUP BY 1, 2 ORDER BY 3 DESC""", names):
            mix.setdefault(row["stage"], {})[row["category"] or "other"] = row["ns"]
        mix = {n: mix[n] for n in names if n in mix}  # pipeline order
    mix["(all)"] = {r["category"] or "other": r["ns"] for r in _rows(con, """
        SELECT category, sum(dur_ns)::BIGINT AS ns FROM kernels GROUP BY 1 ORDER BY 2 DESC""")}
    return mix


def _decode(con, manifest: dict | None, requests) -> dict | None:
    """Per decode step: GPU and wall time, and the KV length it saw (from the manifest)."""
    import polars as pl

    steps = _rows(con, f"""
        -- every decode_step instance with its kernel time; step = payload, else order inside its parent
        WITH s AS (
            SELECT r.range_id, r.pid, r.start_ns, r.end_ns, r.payload, r.parent_id,
                   row_number() OVER (PARTITION BY r.parent_id ORDER BY r.start_ns) - 1 AS order_in_parent
            FROM ranges r
            WHERE r.name IN ('{stages.DOMAIN}:{stages.DECODE_STEP}', '{stages.DECODE_STEP}')),
        g AS (SELECT kr.range_id, sum(k.dur_ns)::BIGINT AS gpu_ns, count(*)::BIGINT AS kernels
              FROM kernel_ranges kr JOIN kernels k USING (op_id) WHERE k.kind = 'kernel' GROUP BY 1)
        SELECT s.range_id, s.pid, s.start_ns, s.end_ns - s.start_ns AS wall_ns, s.payload, s.order_in_parent,
               coalesce(g.gpu_ns, 0) AS gpu_ns, coalesce(g.kernels, 0) AS kernels
        FROM s LEFT JOIN g USING (range_id) ORDER BY s.start_ns""")
    if not steps:
        return None
    manifest = manifest or {}
    default_kv = ((manifest.get("workload") or {}).get("decode_kv_lengths")) or []
    page_kv = {int(p["request"]): (p.get("workload") or {}).get("decode_kv_lengths")
               for p in manifest.get("pages") or [] if isinstance(p, dict) and p.get("request") is not None}
    spans = [] if requests is None else requests.select("request", "start_ns", "end_ns").to_dicts()
    out = []
    for s in steps:
        payload = s["payload"]
        step = int(payload) if payload is not None and str(payload).lstrip("-").isdigit() else int(s["order_in_parent"])
        request = next((r["request"] for r in spans if r["start_ns"] <= s["start_ns"] <= r["end_ns"]), None)
        kv_list = page_kv.get(request) if request is not None else None
        kv_list = kv_list or default_kv
        kv = kv_list[step] if 0 <= step < len(kv_list) else None
        out.append({"request": request, "step": step, "kv_length": kv, "gpu_ns": s["gpu_ns"],
                    "wall_ns": s["wall_ns"], "kernels": s["kernels"]})
    frame = pl.DataFrame(out, schema={"request": pl.Int64, "step": pl.Int64, "kv_length": pl.Int64, "gpu_ns": pl.Int64,
                                      "wall_ns": pl.Int64, "kernels": pl.Int64})
    by_step = (frame.group_by("step").agg(pl.col("kv_length").first(), pl.len().alias("n"),
                                          pl.col("gpu_ns").mean().alias("mean_gpu_ns"),
                                          pl.col("wall_ns").mean().alias("mean_wall_ns")).sort("step"))
    x_name = "kv_length" if by_step["kv_length"].null_count() == 0 else "step"
    fit = _line_fit(by_step[x_name].cast(pl.Float64).to_list(), by_step["mean_gpu_ns"].to_list())
    return {"steps": out, "by_step": by_step.to_dicts(), "fit": {"x": x_name, **fit} if fit else None}


def _line_fit(xs: list[float], ys: list[float]) -> dict | None:
    """Least-squares y = intercept + slope * x, with r^2."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"slope_ns": slope, "intercept_ns": intercept, "r2": (1 - ss_res / ss_tot) if ss_tot else None}


def _opportunity(stage_rows: list[dict], breakdown: list[dict], total_ns: int) -> dict | None:
    """The largest time that could be saved, judged from the numbers:
    - host: wall time of `preprocess` in which the GPU does nothing (CPU-side image work);
    - idle: wall time of prefill / decode in which the GPU does nothing (cpu_ns - busy_ns), when
      more than 20% of the stage's wall time;
    - headroom: a leaf stage's busy time beyond what its roofline bound needs (busy * (1 - max(MFU, MBU)));
    - otherwise the largest part of the kernel-time breakdown."""
    candidates = []
    leaves = {p["part"] for p in breakdown}
    for r in stage_rows:
        name = r["stage"]
        idle = (r["cpu_ns"] or 0) - (r["busy_ns"] or 0)
        if name == stages.PREPROCESS and idle > 0:
            candidates.append({"kind": "host", "stage": name, "ns": int(idle), "share": r["gpu_idle_share"]})
        if name in (stages.PREFILL, stages.DECODE) and idle > 0 and (r["gpu_idle_share"] or 0) > 0.2:
            candidates.append({"kind": "idle", "stage": name, "ns": int(idle), "share": r["gpu_idle_share"]})
        utilisation = max(r.get("mfu") or 0, r.get("mbu") or 0) / 100  # percent -> fraction
        if name in leaves and utilisation > 0:
            candidates.append({"kind": "headroom", "stage": name, "ns": int(r["busy_ns"] * (1 - min(utilisation, 1))),
                               "share": 1 - min(utilisation, 1), "utilisation": utilisation, "bound": r.get("bound")})
    if candidates:
        best = max(candidates, key=lambda c: c["ns"])
    else:
        parts = [p for p in breakdown if p["part"] not in ("outside stages", "other ranges")] or breakdown
        if not parts or not total_ns:
            return None
        top = max(parts, key=lambda p: p["ns"])
        best = {"kind": "largest", "stage": top["part"], "ns": top["ns"], "share": top["share"]}
    best["text"] = _opportunity_text(best)
    return best


def _ms(ns) -> str:
    return "-" if ns is None else f"{ns / 1e6:,.2f} ms"


def _opportunity_text(o: dict) -> str:
    if o["kind"] == "host":
        return (f"Preprocessing keeps the GPU waiting for {_ms(o['ns'])}: it runs on the CPU while the GPU "
                "has nothing to do. Preparing the next page while the GPU works on the current one "
                "(a two-stage pipeline) would hide most of it.")
    if o["kind"] == "idle":
        return (f"The GPU sits idle for {100 * o['share']:.0f}% of `{o['stage']}` ({_ms(o['ns'])} of its wall time): "
                "it waits on the host (Python, kernel launches, synchronisation). Fewer, larger kernels "
                "(CUDA graphs, fused ops, torch.compile) and no host syncs inside the stage would reclaim most of it.")
    if o["kind"] == "headroom":
        bound = o.get("bound") or "roofline"
        return (f"`{o['stage']}` runs at {100 * o['utilisation']:.0f}% of its {bound} limit; "
                f"reaching the hardware's peak would save up to {_ms(o['ns'])} of GPU time.")
    return (f"`{o['stage']}` takes the largest share of GPU kernel time ({100 * (o['share'] or 0):.0f}%, "
            f"{_ms(o['ns'])}); it is where optimisation pays most.")


def build_report(trace, *, peak_tflops: float | None = None, peak_gbs: float | None = None) -> dict:
    """Every number of the report, as the metrics.json object: the analysis document (the JSON contract
    of `--json`, analyze.out.document) plus what only the report shows."""
    import polars as pl

    from dsocr_perf.analyze.out.dataset import dataset_stats
    from dsocr_perf.analyze.out.document import clean, document

    doc = document(trace, "stages", peak_tflops=peak_tflops, peak_gbs=peak_gbs)
    con = trace.con
    manifest = trace.manifest if isinstance(trace.manifest, dict) else None
    warnings = doc["warnings"]
    table = trace.polars("stages")
    names = [r["name"] for r in doc["ranges"]]
    level_names = set(names)
    if not trace.is_dsocr:
        names, level_names = _stage_names(table, con)
    level_ns = int(table.filter(pl.col("name").is_in(list(level_names)))["inclusive_ns"].sum())
    is_dsocr = trace.is_dsocr
    by_name = {r["name"]: r for r in document(trace, "all", peak_tflops=peak_tflops, peak_gbs=peak_gbs)["ranges"]} \
        if not is_dsocr else {r["name"]: r for r in doc["ranges"]}
    stage_rows = [dict(by_name[n], share=by_name[n]["inclusive_frac"], gpu_idle_share=by_name[n]["idle_frac"])
                  for n in names if n in by_name]
    impossible = [r["stage"] for r in stage_rows if (r.get("mfu") or 0) > 100 or (r.get("mbu") or 0) > 100]
    if impossible:
        warnings.append(f"MFU or MBU above 100% for {', '.join(impossible)}: the manifest's workload cannot be "
                        "what ran (or the GPU peaks are wrong); do not trust those rows")
    kernel_ns = doc["totals"]["kernel_ns"]
    breakdown = _breakdown({r["name"]: r for r in stage_rows if r["stage"] != stages.REQUEST}, kernel_ns, is_dsocr,
                           level_ns)
    outside = next((p for p in breakdown if p["part"] == "outside stages"), None)
    if outside and outside["share"] and outside["share"] > 0.1:
        warnings.append(f"{100 * outside['share']:.0f}% of kernel time is launched outside every stage range")
    if doc["totals"]["kernels"] == 0:
        warnings.append("the trace has no kernels: every GPU time is zero")
    stats = dataset_stats(trace, manifest)
    shown = [n for n in names if bare(n) != stages.REQUEST]
    report = dict(doc)
    report.update({
        "report_schema": REPORT_SCHEMA,
        "trace_info": {**doc["trace_info"], **_file_facts(Path(trace.path))},
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dsocr_stages": is_dsocr,
        "model_info": {k: v for k, v in (manifest or {}).get("model", {}).items() if k != "config"}
        if isinstance((manifest or {}).get("model"), dict) else None,
        "workload_full": (manifest or {}).get("workload"),
        "capture": (manifest or {}).get("capture"),
        "environment": (manifest or {}).get("environment"),
        "stages": stage_rows,
        "breakdown": breakdown,
        "model_mfu": doc["model_level"],
        "top_kernels": _top_kernels(con, shown),
        "category_mix": _category_mix(con, shown),
        "decode": _decode(con, manifest, stats.requests.join(_request_spans(con), on="request") if stats else None),
        "dataset": stats.to_dict() if stats else None,
        "warnings": warnings,
    })
    report["opportunity"] = _opportunity(stage_rows, breakdown, kernel_ns)
    return clean(report)


def _request_spans(con):
    import polars as pl

    from dsocr_perf.analyze.out.dataset import REQUEST_RANGES_SQL
    rows = con.execute(REQUEST_RANGES_SQL).fetchall()
    out = []
    for order, (_, _, start, end, payload) in enumerate(rows):
        index = int(payload) if payload not in (None, "") and str(payload).lstrip("-").isdigit() else order
        out.append({"request": index, "start_ns": start, "end_ns": end})
    return pl.DataFrame(out, schema={"request": pl.Int64, "start_ns": pl.Int64, "end_ns": pl.Int64})


# ------------------------------------------------------------------------------------------ markdown

def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def render_markdown(data: dict) -> str:
    title = "DeepSeek-OCR trace report" if data.get("dsocr_stages") else "Trace report"
    lines = [f"# {title}: {Path(data['trace_info']['path']).name}", ""]
    lines += ["## Setup", ""]
    g = data["gpu"]
    info = data["trace_info"]
    setup = [["trace", f"`{info['path']}` ({info['source']}, {info['size_bytes']:,} bytes)"],
             ["exporter", data["trace_info"].get("exporter_version") or "-"],
             ["GPU", f"{g.get('name') or 'unknown'}" + (f", {g['sm_count']} SMs" if g.get("sm_count") else "")],
             ["peaks", (f"{_fmt_num(g.get('peak_tflops'))} TFLOP/s ({g.get('dtype')}), "
                        f"{_fmt_num(g.get('peak_gbs'), '{:,.0f}')} GB/s -- {g.get('source')}")
              if g.get("peak_tflops") or g.get("peak_gbs") else "unknown"]]
    if data.get("model_info"):
        m = data["model_info"]
        setup.append(["model", ", ".join(f"{k} {v}" for k, v in m.items() if v is not None)])
    if data.get("environment"):
        e = data["environment"]
        setup.append(["capture env", ", ".join(f"{k} {e[k]}" for k in ("driver", "cuda", "torch", "nsys") if e.get(k))])
    lines += _table(["", ""], setup, "ll") + [""]

    lines += ["## Workload", ""]
    w = data.get("workload_full")
    if w:
        views = ", ".join(f"{v.get('count')}x {v.get('name')} {v.get('side')}px" for v in w.get("views") or [])
        lines += _table(["", ""], [["mode", w.get("mode")], ["image", f"{w.get('image_width')}x{w.get('image_height')}"],
                                   ["tile grid", w.get("tile_grid")], ["views", views or "-"],
                                   ["image tokens", w.get("image_tokens")], ["prompt tokens", w.get("prompt_tokens")],
                                   ["generated tokens", w.get("generated_tokens")]], "ll") + [""]
    else:
        lines += ["No workload in the trace's manifest (or no manifest): shapes, FLOPs and MFU are unknown.", ""]

    t = data["totals"]
    lines += ["## Stages", "",
              f"GPU kernel time in the trace: {_fmt_ms(t['kernel_ns'])} ms in {t['kernels']:,} kernels; "
              f"the GPU was busy {_fmt_pct(t['gpu_busy_frac'])} of the {_fmt_ms(t['gpu_span_ns'])} ms from first to last GPU op.",
              "Inclusive = kernels launched inside the stage's ranges (nested stages count in their parents too); "
              "busy = union of those kernels' intervals; CPU = wall time of the ranges.", ""]
    header, rows = stage_table(data)
    lines += _table(header, rows) + [""]
    if data.get("model_mfu"):
        mm = data["model_mfu"]
        lines += [f"Model-level (prefill + decode): {_fmt_num((mm.get('flops') or 0) / 1e9)} GFLOP, "
                  f"{_fmt_num(mm.get('tflops'))} TFLOP/s, MFU {_fmt_num(mm.get('mfu'), '{:.1f}%')}, "
                  f"MBU {_fmt_num(mm.get('mbu'), '{:.1f}%')}.", ""]
    lines += ["Where the kernel time goes (disjoint parts, summing to the trace's kernel time):", ""]
    lines += _table(["part", "ms", "share"], [[p["part"], _fmt_ms(p["ns"]), _fmt_pct(p["share"])] for p in data["breakdown"]])
    lines += [""]

    if data.get("dataset"):
        d = data["dataset"]
        tp = d["throughput"]
        lines += ["## Pages and repeats", "",
                  f"{_plural(d['requests'], 'request')} over {_plural(d['pages'], 'page')}, "
                  f"up to {_plural(d['max_repeats'], 'repeat')} each"
                  + ("" if d["pages_known"] else " (no manifest: each request counted as its own page)") + ". "
                  f"Throughput: {_fmt_num(tp.get('pages_per_s'), '{:,.2f}')} pages/s, "
                  f"{_fmt_num(tp.get('tokens_per_s'), '{:,.1f}')} tokens/s end to end, "
                  f"{_fmt_num(tp.get('decode_tokens_per_s'), '{:,.1f}')} tokens/s in decode.", "",
                  "Stage GPU time per request (inclusive kernel time; cv = std/mean; repeat cv = pooled "
                  "within-page std / mean, the run-to-run noise):", ""]
        lines += _table(["stage", "n", "mean ms", "std ms", "min ms", "max ms", "cv", "repeat cv"],
                        [[o["stage"], o["n"], _fmt_ms(o["mean_ns"]), _fmt_ms(o["std_ns"]), _fmt_ms(o["min_ns"]),
                          _fmt_ms(o["max_ns"]), _fmt_pct(o["cv"]), _fmt_pct(o.get("repeat_cv"))] for o in d["overall"]])
        if d["pages_known"]:
            lines += ["", "Per page:", ""]
            lines += _table(["page", "stage", "n", "mean ms", "std ms", "min ms", "max ms", "cv"],
                            [[p["page"], p["stage"], p["n"], _fmt_ms(p["mean_ns"]), _fmt_ms(p["std_ns"]),
                              _fmt_ms(p["min_ns"]), _fmt_ms(p["max_ns"]), _fmt_pct(p["cv"])] for p in d["per_page"]])
        lines += [""]

    lines += ["## Top kernels per stage", ""]
    for stage, kernels in data["top_kernels"].items():
        if not kernels:
            continue
        lines += [f"**{stage}**", ""]
        lines += _table(["kernel", "category", "count", "total ms", "share of stage"],
                        [[f"`{_short(k['label'])}`", k["category"], k["instances"], _fmt_ms(k["total_ns"]),
                          _fmt_pct(k["share"])] for k in kernels]) + [""]

    lines += ["## Kernel category mix", "", "Share of each stage's GPU-op time per kernel category:", ""]
    mix = data["category_mix"]
    categories = sorted({c for m in mix.values() for c in m}, key=lambda c: -mix["(all)"].get(c, 0))
    rows = []
    for stage, m in mix.items():
        total = sum(m.values())
        rows.append([stage] + [_fmt_pct(m.get(c, 0) / total if total else None, 0) for c in categories])
    lines += _table(["stage"] + categories, rows) + [""]

    lines += ["## Decode step time vs context length", ""]
    dec = data.get("decode")
    if dec:
        if dec.get("fit"):
            lines += [fit_sentence(dec), ""]
        by = dec["by_step"]
        shown = by if len(by) <= 12 else by[:6] + [None] + by[-5:]
        rows = [["...", "", "", "", ""] if s is None else
                [s["step"], _fmt_num(s["kv_length"], "{:,}") if s["kv_length"] is not None else "-", s["n"],
                 _fmt_ms(s["mean_gpu_ns"]), _fmt_ms(s["mean_wall_ns"])] for s in shown]
        lines += _table(["step", "KV length", "n", "mean GPU ms", "mean wall ms"], rows) + [""]
    else:
        lines += ["No decode_step ranges in this trace.", ""]

    if data.get("opportunity"):
        lines += ["## Biggest opportunity", "", data["opportunity"]["text"], ""]
    lines += ["## Warnings", ""]
    lines += [f"- {w}" for w in data["warnings"]] or ["- none"]
    lines += ["", f"Generated {data['generated_utc']} by dsocr-analyze report; numbers in metrics.json.", ""]
    return "\n".join(lines)


def render_summary(data: dict) -> str:
    """One page, plain words, every sentence computed from the numbers."""
    name = Path(data["trace_info"]["path"]).name
    t = data["totals"]
    lines = [f"# Summary: {name}", ""]
    w = data.get("workload_full")
    what = (f"one {w.get('mode')}-mode page ({w.get('image_tokens')} image tokens, {w.get('generated_tokens')} "
            f"generated tokens)") if w else None
    ds = data.get("dataset")
    if ds:
        what = (f"{_plural(ds['requests'], 'page run')} ({_plural(ds['pages'], 'distinct page')}, "
                f"up to {_plural(ds['max_repeats'], 'repeat')} each)")
    gpu = data["gpu"].get("name") or "an unknown GPU"
    model = "DeepSeek-OCR" if data.get("workload_full") else "The traced program"
    gpu_line = (f" The GPU ran {t['kernels']:,} kernels for {_fmt_ms(t['kernel_ns'], 1)} ms and was busy "
                f"{_fmt_pct(t['gpu_busy_frac'], 0)} of the time between its first and last operation."
                if t["kernels"] else " The trace holds no GPU kernels, so there is no GPU time to explain.")
    lines += [f"**What was measured.** {model} on {gpu}" + (f": {what}." if what else ".") + gpu_line, ""]
    parts = sorted([p for p in data["breakdown"] if p["ns"] > 0], key=lambda p: -p["ns"])
    if parts:
        top = parts[:3]
        words = "; ".join(f"{p['part']} {_fmt_pct(p['share'], 0)} ({_fmt_ms(p['ns'], 1)} ms)" for p in top)
        lines += [f"**Where the GPU time goes.** {words}."]
        idle = [r for r in data["stages"] if r["stage"] in (stages.PREFILL, stages.DECODE) and r["gpu_idle_share"]]
        for r in idle:
            lines += [f"During {r['stage']} the GPU is idle {_fmt_pct(r['gpu_idle_share'], 0)} of the wall time "
                      f"({_fmt_ms(r['cpu_ns'], 1)} ms wall, {_fmt_ms(r['busy_ns'], 1)} ms of kernels)."]
        lines += [""]
    with_mfu = [r for r in data["stages"] if r.get("mfu") is not None or r.get("mbu") is not None]
    if with_mfu:
        lines += ["**How close to the hardware.** " + "; ".join(
            f"{r['stage']} reaches {_fmt_num(r.get('mfu'), '{:.0f}%')} of peak compute and "
            f"{_fmt_num(r.get('mbu'), '{:.0f}%')} of peak "
            f"memory bandwidth" + (f" ({r['bound']}-bound)" if r.get("bound") else "") for r in with_mfu) + ".", ""]
    else:
        lines += ["**How close to the hardware.** Not computed: the trace carries no workload manifest "
                  "or the GPU's peaks are unknown.", ""]
    if data.get("opportunity"):
        lines += [f"**Biggest opportunity.** {data['opportunity']['text']}", ""]
    if ds and any(o.get("repeat_cv") is not None for o in ds["overall"]):
        noisy = max((o for o in ds["overall"] if o.get("repeat_cv") is not None), key=lambda o: o["repeat_cv"])
        lines += [f"**How reliable.** Across repeats of the same page the stage times vary by at most "
                  f"{_fmt_pct(noisy['repeat_cv'])} (std/mean, {noisy['stage']}); differences smaller than about twice "
                  "that are noise.", ""]
    if data["warnings"]:
        lines += [f"**Caveats.** {len(data['warnings'])} warning(s), listed in report.md.", ""]
    return "\n".join(lines)


def render_assumptions(data: dict) -> str:
    return "\n".join([
        "# Assumptions behind the numbers", "",
        "- **Attribution** (NVIDIA's rule, as `nsys stats` nvtx_kern_sum): a GPU operation belongs to the CUDA API call "
        "with the same correlation id in the same process; a range contains it when that call lies inside the range "
        "on the same thread. When the kernel runs does not matter.",
        "- **GPU time of a stage** = inclusive kernel time: the summed durations of the kernels launched inside any of "
        "its ranges (memcpy/memset excluded). Nested stages (sam inside prefill) count in both; the breakdown table "
        "splits the kernel time into disjoint parts instead.",
        "- **Busy** = length of the union of a stage's kernel intervals (overlapping streams count once); "
        "**GPU idle** = 1 - busy / wall time of the stage's ranges.",
        "- **Dataset statistics**: a stage's time in a request is the sum over its instances inside that request's "
        "range; std is the sample std (n-1); the repeat std pools the per-page variances (weights n-1).",
        "- **Decode steps**: the step index is the range payload (else its order inside `decode`); the KV length "
        "of a step comes from the manifest (`decode_kv_lengths`). The fit is ordinary least squares of the mean GPU "
        "time per step index against KV length (or step index when KV lengths are unknown).",
        "- **FLOPs and bytes** come from the analytic model of `dsocr.flops` applied to the workload recorded in the "
        "trace's manifest (see that module for the counting rules and the attention policy); MFU = achieved "
        "TFLOP/s / peak, MBU = achieved GB/s / peak, both over busy time.",
        f"- **Peaks**: {data['gpu'].get('source') or 'unknown'} "
        f"({_fmt_num(data['gpu'].get('peak_tflops'))} TFLOP/s {data['gpu'].get('dtype') or ''}, "
        f"{_fmt_num(data['gpu'].get('peak_gbs'), '{:,.0f}')} GB/s).",
        "- **Biggest opportunity**: the largest of (a) GPU idle time inside preprocess/prefill/decode when idle > 20% "
        "of their wall time, (b) a stage's busy time x (1 - max(MFU, MBU)); without either, the largest part of "
        "the kernel-time breakdown.",
        "- Times are the trace's clock in ns; nothing is extrapolated beyond the traced run.", ""])


def environment() -> dict:
    from importlib import metadata
    packages = {}
    for name in ("dsocr-perf", "duckdb", "polars", "pyarrow", "click", "sqlite-utils", "matplotlib"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "packages": packages, "argv": sys.argv}


def _yaml_scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(value, indent: int = 0) -> str:
    """A tiny YAML emitter for dicts, lists and scalars (block style, strings double-quoted)."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        out = ""
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                out += f"{pad}{key}:\n" + to_yaml(item, indent + 1)
            else:
                empty = "{}" if isinstance(item, dict) else "[]"
                out += f"{pad}{key}: {empty if isinstance(item, (dict, list)) else _yaml_scalar(item)}\n"
        return out
    if isinstance(value, list):
        if not value:
            return pad + "[]\n"
        out = ""
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 1)
                out += f"{pad}- " + body.lstrip()
            else:
                out += f"{pad}- {_yaml_scalar(item)}\n"
        return out
    return pad + _yaml_scalar(value) + "\n"


def inputs(data: dict, options: dict, manifest: dict | None) -> dict:
    pages = [{"request": p.get("request"), "repeat": p.get("repeat"), "image": (p.get("image") or {}).get("path"),
              "sha256": (p.get("image") or {}).get("sha256")} for p in (manifest or {}).get("pages") or []]
    return {"trace": {k: data["trace_info"][k] for k in ("path", "source", "size_bytes", "sha256")},
            "options": options, "model": data.get("model_info") or {}, "capture": data.get("capture") or {},
            "pages": pages}


def write_report(trace, out_dir: Path, *, force: bool = False, peak_tflops=None, peak_gbs=None,
                 progress: bool = False) -> dict:
    """Write every report file into out_dir; returns the metrics.json object."""
    from dsocr_perf.analyze.out.html import render_html

    out_dir = check_report_folder(out_dir, force, trace.path)
    step = (lambda text: click.echo(f"report: {text}", err=True)) if progress else (lambda text: None)
    step("attributing and aggregating")
    data = build_report(trace, peak_tflops=peak_tflops, peak_gbs=peak_gbs)
    step("plots and html")
    files = {
        "metrics.json": json.dumps(data, indent=2, default=str, allow_nan=False) + "\n",
        "report.md": render_markdown(data),
        "stakeholder_summary.md": render_summary(data),
        "report.html": render_html(data, trace),
        "env.json": json.dumps({"analysis": environment(), "capture": data.get("environment")}, indent=2,
                               default=str) + "\n",
        "inputs.yaml": to_yaml(inputs(data, {"peak_tflops": peak_tflops, "peak_gbs": peak_gbs}, trace.manifest)),
        "assumptions.md": render_assumptions(data),
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {out_dir} ({e.strerror or e}); pass --out a writable folder") from None
    for name, text in files.items():
        with atomic_output(out_dir / name, "w", encoding="utf-8") as f:
            f.write(text)
    step(f"wrote {len(files)} files to {out_dir}")
    return data


def check_report_folder(out_dir: Path, force: bool, trace_path: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise OutputError(f"{out_dir} is a symlink: reports are never written through one; pass --out a plain folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file, not a folder: pass --out a folder")
    existing_parent = next((p for p in out_dir.absolute().parents if p.exists()), None)
    if existing_parent is not None and not existing_parent.is_dir():
        raise OutputError(f"{existing_parent} is a file, not a folder: pass --out a path inside a folder")
    try:
        if out_dir.exists() and Path(trace_path).resolve().is_relative_to(out_dir.resolve()) and Path(trace_path).is_dir():
            raise OutputError(f"{out_dir} is the input trace's folder: pass --out another folder")
        if out_dir.exists() and out_dir.resolve() in (Path(trace_path).resolve().parent, Path(trace_path).resolve()):
            raise OutputError(f"{out_dir} holds the input trace: a report goes in a folder of its own (the default is "
                              "NAME.report/ beside the trace); pass --out another folder")
    except OSError:
        pass
    if is_input(out_dir, (trace_path,)) or any(is_input(out_dir / f, (trace_path,)) for f in FILES):
        raise OutputError(f"{out_dir} is the input trace (or holds a file it uses): pass --out another folder")
    existing = [f for f in FILES if (out_dir / f).exists()]
    if existing and not force:
        raise OutputError(f"{out_dir} already holds {', '.join(existing)}: pass --force to overwrite, or --out "
                          "another folder")
    links = [f for f in FILES if (out_dir / f).is_symlink()]
    if links:
        raise OutputError(f"{out_dir / links[0]} is a symlink: reports are never written through one; remove it")
    return out_dir


def register(cli, common) -> None:
    @cli.command("report", short_help="Report files: md, html, summary, metrics.json.")
    @common.trace_argument
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
                  help="Folder for the report files (default: TRACE's stem + .report/ beside it).")
    @common.force_option
    @click.option("--peak-tflops", type=common.positive_number, default=None,
                  help="Override the GPU's dense peak TFLOP/s.")
    @click.option("--peak-gbs", type=common.positive_number, default=None,
                  help="Override the GPU's peak memory bandwidth in GB/s.")
    @common.no_cache_option
    def report_command(trace_path: Path, out_dir: Path | None, force: bool, peak_tflops, peak_gbs,
                       no_cache: bool) -> None:
        """Write report.md, report.html, stakeholder_summary.md, metrics.json and reproducibility files for TRACE."""
        out_dir = check_report_folder(out_dir or derived(trace_path, ".report"), force, trace_path)
        trace = common.open(trace_path, no_cache)
        write_report(trace, out_dir, force=force, peak_tflops=peak_tflops, peak_gbs=peak_gbs,
                     progress=sys.stderr.isatty())
        common.echo(f"wrote {out_dir}/ ({', '.join(FILES)})")
