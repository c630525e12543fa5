"""`dsocr-analyze report TRACE --out DIR`: the report files people read, and the numbers behind them.

Every number the reports show is in metrics.json: the analysis document of `--json`
(analyze.out.document, schema dsocr-analysis/1) plus what only the report shows. Files written to DIR
(nothing is overwritten without --force):
  report.md               the top three opportunities; the stage hierarchy (wall, busy, GPU time); where
                          each stage's wall time goes (busy + idle causes); FLOPs, MFU/MBU over busy and
                          over wall time, roof %, the limiter; the decode steps (summary, the median
                          step's timeline, the steps); kernel time by part, top kernels, category mix;
                          pages and repeats; setup; warnings. Definitions under each table.
  report.html             the same, self-contained (inline CSS and SVG figures, no scripts, no network):
                          idle-cause bars per stage, wall and busy time per decode step, the timeline of
                          the median decode step, roofline, category mix, spread over requests
  stakeholder_summary.md  one page in plain words: where the time goes, how close to the hardware, the
                          top three opportunities
  metrics.json            every number of the report (below)
  env.json                the analysis environment (python, packages, platform) and the capture's
  inputs.yaml             what went in: the trace (path, size, sha256), options, manifest pages
  assumptions.md          definitions and modelling assumptions behind the numbers

metrics.json = the document (schema, trace_info, totals, ranges, steps, step_summary, opportunities,
workload, gpu, model_level, attention_policy, warnings, notes) plus ("report_schema": "dsocr-report/2";
times in integer ns on the trace clock, shares in [0, 1], null where a number does not apply):
  trace_info    the document's, plus size_bytes and sha256 of the trace file
  generated_utc, dsocr_stages (true when the trace has DeepSeek-OCR stage ranges)
  model_info    the manifest's model object (preset, weights, seed, dtype, attention), config left out
  workload_full the manifest's workload object (mode, tile_grid, views, tokens, decode_kv_lengths) or null
  capture, environment  the manifest's
  stages        the rows the stage tables show: the document's range entries (DeepSeek-OCR stages in
                tree order; else the busiest ranges of one nesting level), each with share
                (= inclusive_frac) and gpu_idle_share (= idle_frac) kept for old readers
  breakdown     [{part, ns, share}]: kernel time split into disjoint parts (leaf stages, the rest of
                prefill, outside every stage) that sum to totals.kernel_ns
  model_mfu     = model_level (kept for old readers)
  top_kernels   {stage: [{name, short_name, label, category, instances, total_ns, share}]} (top 5 each;
                label = analyze.out.stages.kernel_label when two rows share a short name)
  category_mix  {stage: {category: ns}} GPU-op time per kernel category, plus "(all)" for the trace
  decode        {steps: [{request, step, kv_length, gpu_ns, wall_ns, kernels}], by_step: [{step,
                kv_length, n, mean_gpu_ns, mean_wall_ns}], fit: {x, slope_ns, intercept_ns, r2}} or null
                (gpu_ns = summed kernel time of the step)
  step_timeline the decode step of median wall time, from the canonical tables: {step, request,
                kv_length, range_id, start_ns, end_ns, wall_ns, busy_ns (union of its kernels, = the
                step's busy_ns), kernels, copies, idle_causes_ns (the step's), host {launch, sync, memcpy,
                other: {calls, ns}} (CUDA calls of its thread, memsets counted as launches),
                outside_cuda_ns, resolution_ns, lanes {kernels, copies, launch, sync, memcpy, other:
                [[start, end] ns from the step's start, intervals closer than resolution_ns merged]}}
                or null
  dataset       analyze.out.dataset.DatasetStats.to_dict() or null
  opportunity   {kind ('idle'|'headroom'|'host'|'largest'), stage, ns, share, text}: the first of
                `opportunities` in the old shape (kept for old readers)
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
from dsocr_perf.analyze.out.table import (
    CAUSES,
    _fmt_ms,
    _fmt_num,
    _fmt_pct,
    _plural,
    _short,
    category_rows,
    dataset_rows,
    dataset_sentence,
    definitions,
    efficiency_table,
    fit_sentence,
    headline,
    model_sentence,
    opportunity_parts,
    peaks_sentence,
    setup_rows,
    shown_name,
    stage_name,
    stage_table,
    step_rows,
    step_sentences,
    timeline_sentence,
    timeline_table,
    tree_marks,
    wall_table,
)
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
SUMMARY_STAGES = 3      # the summary names the top-level stages with the longest wall time, at most this many


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


def _label_duplicates(kernels: list[dict]) -> None:
    from dsocr_perf.analyze.out.stages import kernel_label

    counts: dict[str, int] = {}
    for k in kernels:
        counts[k["short_name"] or k["name"]] = counts.get(k["short_name"] or k["name"], 0) + 1
    for k in kernels:
        base = k["short_name"] or k["name"]
        k["label"] = kernel_label(k["name"] or "", k["short_name"]) if counts[base] > 1 else base


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


OLD_KINDS = {"gpu_idle": "idle", "roofline": "headroom", "host_overlap": "host"}


def _old_opportunity(doc: dict, breakdown: list[dict]) -> dict | None:
    """The first ranked opportunity in the shape of the old single `opportunity` key (kept for old
    readers); without ranked ones, the largest part of the kernel time."""
    if doc["opportunities"]:
        o = doc["opportunities"][0]
        parts = opportunity_parts(o)
        return {"kind": OLD_KINDS.get(o["kind"], o["kind"]), "stage": o["stage"], "ns": o["recoverable_ns"],
                "share": o["recoverable_frac"], "text": f"{parts['title']}: recover {parts['recover']}."}
    parts = [p for p in breakdown if p["part"] not in ("outside stages", "other ranges") and p["ns"] > 0]
    if not parts:
        return None
    top = max(parts, key=lambda p: p["ns"])
    return {"kind": "largest", "stage": top["part"], "ns": top["ns"], "share": top["share"],
            "text": f"{top['part']} takes the largest share of the kernel time ({_fmt_pct(top['share'], 0)}, "
                    f"{_fmt_ms(top['ns'])} ms)."}


# ----------------------------------------------------------------------- the median decode step's timeline

TIMELINE_RESOLUTION = 20000    # lanes merge intervals closer than wall / 20000: below a pixel of a 10x zoom
LANE_OF_CALL = {"launch": "launch", "memset": "launch", "sync": "sync", "memcpy": "memcpy", "other": "other"}


def _step_timeline(trace, doc: dict) -> dict | None:
    """The decode step of median wall time as lanes: its GPU ops' intervals and its thread's CUDA calls."""
    if not doc["steps"]:
        return None
    median = doc["step_summary"]["median_wall_ns"]
    step = min(doc["steps"], key=lambda s: (abs(s["wall_ns"] - median), s["start_ns"]))
    rng = _step_range(trace.con, step)
    if rng is None:
        return None
    start, end = rng["start_ns"], rng["end_ns"]
    kernels, copies = _step_ops(trace.con, rng["range_id"])
    calls = _thread_calls(trace.con, rng)
    resolution = max(1, step["wall_ns"] // TIMELINE_RESOLUTION)
    lanes = {"kernels": kernels, "copies": copies, **calls}
    every_call = [iv for lane in calls.values() for iv in lane]
    return {"step": step["step"], "request": step["request"], "kv_length": step["kv_length"],
            "range_id": rng["range_id"], "start_ns": start, "end_ns": end, "wall_ns": step["wall_ns"],
            "busy_ns": _covered(kernels), "kernels": len(kernels), "copies": len(copies),
            "idle_causes_ns": step["idle_causes_ns"],
            "host": {lane: {"calls": len(iv), "ns": sum(e - s for s, e in iv)} for lane, iv in calls.items()},
            "outside_cuda_ns": max(0, end - start - _covered(every_call)),
            "resolution_ns": resolution,
            "lanes": {name: [[s - start, e - start] for s, e in _merged(iv, resolution)] for name, iv in lanes.items()}}


def _step_range(con, step: dict) -> dict | None:
    found = _rows(con, """
        -- the step's range instance
        SELECT range_id, pid, tid, start_ns, end_ns FROM ranges
        WHERE name IN (?, ?) AND start_ns = ? ORDER BY range_id LIMIT 1""",
                  [stages.DECODE_STEP, f"{stages.DOMAIN}:{stages.DECODE_STEP}", step["start_ns"]])
    return found[0] if found else None


def _step_ops(con, range_id: int) -> tuple[list, list]:
    """(kernel intervals, copy and memset intervals) of the GPU ops launched inside the range."""
    ops = con.execute("""
        -- the GPU ops launched inside the step
        SELECT k.kind, k.start_ns, k.end_ns FROM kernel_ranges kr JOIN kernels k USING (op_id)
        WHERE kr.range_id = ? ORDER BY k.start_ns""", [range_id]).fetchall()
    return [(s, e) for kind, s, e in ops if kind == "kernel"], [(s, e) for kind, s, e in ops if kind != "kernel"]


def _thread_calls(con, rng: dict) -> dict[str, list]:
    """The CUDA calls the range's thread starts inside it (cut at its end), by lane: launch, sync, memcpy, other."""
    calls = con.execute("""
        -- the CUDA calls its thread starts inside it
        SELECT kind, start_ns, least(end_ns, ?) FROM cuda_api
        WHERE pid = ? AND tid = ? AND start_ns BETWEEN ? AND ? ORDER BY start_ns""",
                        [rng["end_ns"], rng["pid"], rng["tid"], rng["start_ns"], rng["end_ns"]]).fetchall()
    lanes: dict[str, list] = {lane: [] for lane in ("launch", "sync", "memcpy", "other")}
    for kind, s, e in calls:
        lanes[LANE_OF_CALL.get(kind, "other")].append((s, e))
    return lanes


def _merged(intervals: list[tuple[int, int]], gap: int = 0) -> list[list[int]]:
    """Sorted intervals merged where they overlap or lie at most `gap` apart."""
    out: list[list[int]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def _covered(intervals: list[tuple[int, int]]) -> int:
    """The length of the union of the intervals."""
    return sum(e - s for s, e in _merged(intervals))


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
    report["step_timeline"] = _step_timeline(trace, doc)
    report["opportunity"] = _old_opportunity(doc, breakdown)
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


def _definitions(pairs: list[tuple[str, str]]) -> list[str]:
    return ["Definitions:", ""] + [f"- **{term}**: {text}" for term, text in pairs] + [""]


def _stage_names_md(data: dict) -> list[str]:
    rows = data["stages"]
    return [mark + stage_name(r, data.get("dsocr_stages")) for r, mark in zip(rows, tree_marks(rows))]


def render_markdown(data: dict) -> str:
    title = "DeepSeek-OCR trace report" if data.get("dsocr_stages") else "Trace report"
    lines = [f"# {title}: {Path(data['trace_info']['path']).name}", "", headline(data), ""]
    terms = definitions(data)
    for section in (_md_opportunities, _md_stages, _md_wall, _md_efficiency, _md_steps, _md_kernels, _md_dataset,
                    _md_setup):
        lines += section(data, terms)
    lines += ["## Warnings", ""]
    lines += [f"- {w}" for w in data["warnings"]] or ["- none"]
    lines += ["", f"Generated {data['generated_utc']} by dsocr-analyze report; every number is in metrics.json, "
                  "the figures are in report.html.", ""]
    return "\n".join(lines)


def _md_opportunities(data: dict, terms: dict) -> list[str]:
    if not data["opportunities"]:
        return ["## Biggest opportunity", "", data["opportunity"]["text"], ""] if data.get("opportunity") else []
    lines = ["## Top opportunities", "",
             "Ranked by the time each fix could recover; each fix assumed alone, then with those ranked above it.", ""]
    for o in data["opportunities"]:
        p = opportunity_parts(o)
        lines += [f"{o['rank']}. **{p['title']}**: recover {p['recover']}; throughput, measured under "
                  f"tracing: {p['throughput']}.",
                  f"   - evidence: {p['evidence']}", f"   - query: `{p['query']}`"]
    return lines + [""] + _definitions(terms["opportunities"])


def _md_stages(data: dict, terms: dict) -> list[str]:
    t = data["totals"]
    header, rows = stage_table(data["stages"], _stage_names_md(data))
    return (["## Stages", "",
             f"GPU kernel time in the trace: {_fmt_ms(t['kernel_ns'])} ms in {t['kernels']:,} kernels; the GPU was "
             f"busy {_fmt_pct(t['gpu_busy_frac'])} of the {_fmt_ms(t['gpu_span_ns'])} ms from its first to its last "
             "operation.", ""]
            + _table(header, rows) + [""] + _definitions(terms["stages"]))


def _md_wall(data: dict, terms: dict) -> list[str]:
    header, rows = wall_table(data["stages"], _stage_names_md(data))
    return (["## Where the wall time goes", "",
             "Each stage's wall time = busy + idle; idle split by cause (bars in report.html).", ""]
            + _table(header, rows, "l" + "r" * (len(header) - 2) + "l") + [""] + _definitions(terms["wall"]))


def _md_efficiency(data: dict, terms: dict) -> list[str]:
    header, rows = efficiency_table(data["stages"], _stage_names_md(data))
    lines = ["## How close to the hardware", ""]
    if rows:
        lines += _table(header, rows, "l" + "r" * (len(header) - 2) + "l") + ["", peaks_sentence(data)]
        if data.get("model_level"):
            lines += ["", model_sentence(data["model_level"])]
        lines += [""] + _definitions(terms["efficiency"])
    else:
        lines += ["No FLOPs or bytes: the trace carries no workload manifest, so MFU, MBU and the roofline are not "
                  "computed.", ""]
    return lines + [f"Note: {n}" for n in data.get("notes") or []] + ([""] if data.get("notes") else [])


def _md_steps(data: dict, terms: dict) -> list[str]:
    summary = data["step_summary"]
    if not summary.get("steps"):
        return ["## Decode steps", "", "No decode_step ranges in this trace.", ""]
    lines = ["## Decode steps", ""] + step_sentences(summary) + [""]
    tl = data.get("step_timeline")
    if tl:
        header, rows = timeline_table(tl)
        lines += ["### The median step", "", timeline_sentence(tl) + " (timeline figure in report.html)", ""]
        lines += _table(header, rows) + [""]
    header, rows = step_rows(data["steps"])
    lines += ["### Steps", ""] + _table(header, rows) + [""]
    if (data.get("decode") or {}).get("fit"):
        lines += [fit_sentence(data["decode"]), ""]
    return lines + _definitions(terms["steps"])


def _md_kernels(data: dict, terms: dict) -> list[str]:
    lines = ["## Kernel time by part", "", "Disjoint parts that sum to the trace's kernel time:", ""]
    lines += _table(["part", "ms", "share"], [[p["part"], _fmt_ms(p["ns"]), _fmt_pct(p["share"])]
                                             for p in data["breakdown"]]) + [""]
    lines += ["## Top kernels per stage", ""]
    for stage, kernels in data["top_kernels"].items():
        if kernels:
            lines += [f"**{shown_name(stage, data.get('dsocr_stages'))}**", ""]
            lines += _table(["kernel", "category", "count", "total ms", "share of stage"],
                            [[f"`{_short(k['label'], 90)}`", k["category"], f"{k['instances']:,}", _fmt_ms(k["total_ns"]),
                              _fmt_pct(k["share"])] for k in kernels], "llrrr") + [""]
    header, rows = category_rows(data["category_mix"], data.get("dsocr_stages"))
    lines += ["## Kernel category mix", "", "Share of each stage's GPU-op time per kernel category:", ""]
    return lines + _table(header, rows) + [""]


def _md_dataset(data: dict, terms: dict) -> list[str]:
    d = data.get("dataset")
    if not d:
        return []
    lines = ["## Pages and repeats", "", dataset_sentence(d), "",
             "Stage GPU time per request (inclusive kernel time; cv = std/mean; repeat cv = pooled within-page "
             "std / mean, the run-to-run noise):", ""]
    header, rows = dataset_rows(d)
    lines += _table(header, rows)
    if d["pages_known"]:
        lines += ["", "Per page:", ""]
        lines += _table(["page", "stage", "n", "mean ms", "std ms", "min ms", "max ms", "cv"],
                        [[p["page"], p["stage"], p["n"], _fmt_ms(p["mean_ns"]), _fmt_ms(p["std_ns"]),
                          _fmt_ms(p["min_ns"]), _fmt_ms(p["max_ns"]), _fmt_pct(p["cv"])]
                         for p in d["per_page"] if p["stage"] != stages.DECODE_STEP], "llrrrrrr")
    return lines + [""]


def _md_setup(data: dict, terms: dict) -> list[str]:
    return ["## Setup and workload", ""] + _table(["", ""], setup_rows(data), "ll") + [""]


# ------------------------------------------------------------------------------------------ summary

def render_summary(data: dict) -> str:
    """One page, plain words, every sentence computed from the numbers."""
    name = Path(data["trace_info"]["path"]).name
    lines = [f"# Summary: {name}", "", _measured(data), ""]
    lines += _where_time_goes(data)
    lines += _hardware(data)
    if data["opportunities"]:
        lines += ["**Top opportunities** (measured under tracing; each fix alone, then with those above it):", ""]
        for o in data["opportunities"]:
            p = opportunity_parts(o)
            lines.append(f"{o['rank']}. {p['title']}: recover {_fmt_ms(o['recoverable_ns'], 1)} ms; "
                         f"{p['throughput']}.")
        lines += [""]
    elif data.get("opportunity"):
        lines += [f"**Biggest opportunity.** {data['opportunity']['text']}", ""]
    ds = data.get("dataset")
    if ds and any(o.get("repeat_cv") is not None for o in ds["overall"]):
        noisy = max((o for o in ds["overall"] if o.get("repeat_cv") is not None), key=lambda o: o["repeat_cv"])
        lines += [f"**How reliable.** Across repeats of the same page the stage times vary by at most "
                  f"{_fmt_pct(noisy['repeat_cv'])} (std/mean, {noisy['stage']}); differences smaller than about twice "
                  "that are noise.", ""]
    if data["warnings"]:
        lines += [f"**Caveats.** {len(data['warnings'])} warning(s), listed in report.md.", ""]
    return "\n".join(lines)


def _measured(data: dict) -> str:
    t = data["totals"]
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
    return f"**What was measured.** {model} on {gpu}" + (f": {what}." if what else ".") + gpu_line


def _where_time_goes(data: dict) -> list[str]:
    lines = []
    top = [r for r in data["stages"] if not r.get("parent") and r["wall_ns"]]
    if len(top) > SUMMARY_STAGES:
        longest = sorted(top, key=lambda r: -r["wall_ns"])[:SUMMARY_STAGES]
        top = [r for r in top if r in longest]
    if top:
        lines.append("**Where the wall time goes.** " + "; ".join(_wall_words(r) for r in top) + ".")
    parts = sorted([p for p in data["breakdown"] if p["ns"] > 0], key=lambda p: -p["ns"])
    if parts:
        words = "; ".join(f"{p['part']} {_fmt_pct(p['share'], 0)} ({_fmt_ms(p['ns'], 1)} ms)" for p in parts[:3])
        lines.append(f"The GPU's kernel time splits into {words}.")
    return lines + [""] if lines else []


def _wall_words(r: dict) -> str:
    text = f"{r['stage']} {_fmt_ms(r['wall_ns'], 1)} ms wall, GPU busy {_fmt_pct(1 - (r['idle_frac'] or 0), 0)}"
    causes = {k: v for k, v in r["idle_causes_ns"].items() if v > 0}
    if r["idle_ns"] and causes:
        labels = dict(CAUSES)
        top = sorted(causes.items(), key=lambda kv: -kv[1])[:2]
        text += " (idle time: " + ", ".join(f"{labels[k]} {100 * v / r['idle_ns']:.0f}%" for k, v in top) + ")"
    return text


def _hardware(data: dict) -> list[str]:
    modelled = [r for r in data["stages"] if r.get("mfu_busy_pct") is not None or r.get("mbu_busy_pct") is not None]
    if not modelled:
        return ["**How close to the hardware.** Not computed: the trace carries no workload manifest or the GPU's "
                "peaks are unknown.", ""]
    words = "; ".join(f"{r['stage']} {_fmt_num(r.get('mfu_busy_pct'), '{:.0f}%')} of peak compute and "
                      f"{_fmt_num(r.get('mbu_busy_pct'), '{:.0f}%')} of peak memory bandwidth"
                      + (f" ({r['bound']}-bound)" if r.get("bound") else "") for r in modelled)
    return [f"**How close to the hardware** (while the kernels run). {words}.", ""]


def render_assumptions(data: dict) -> str:
    lines = [
        "# Assumptions behind the numbers", "",
        "- **Attribution** (NVIDIA's rule, as `nsys stats` nvtx_kern_sum): a GPU operation belongs to the CUDA API call "
        "with the same correlation id in the same process; a range contains it when that call lies inside the range "
        "on the same thread. When the kernel runs does not matter.",
        "- **Dataset statistics**: a stage's time in a request is the sum over its instances inside that request's "
        "range; std is the sample std (n-1); the repeat std pools the per-page variances (weights n-1).",
        "- **Decode steps**: the step index is the step's position inside its `decode` range; the KV length of a "
        "step comes from the manifest (`decode_kv_lengths`). The fit is ordinary least squares of the mean kernel "
        "time per step against KV length (or step index when KV lengths are unknown).",
        "- **FLOPs and bytes** come from the analytic model of `dsocr.flops` applied to the workload recorded in the "
        "trace's manifest (see that module for the counting rules and the attention policy).",
        f"- **Peaks**: {data['gpu'].get('source') or 'unknown'} "
        f"({_fmt_num(data['gpu'].get('peak_tflops'))} TFLOP/s {data['gpu'].get('dtype') or ''}, "
        f"{_fmt_num(data['gpu'].get('peak_gbs'), '{:,.0f}')} GB/s).",
        "- **Throughput** (tokens/s, pages/s) is measured under tracing: nsys adds host time to every CUDA call, so "
        "an untraced run is faster, most where the host is the limiter.",
        "- Times are the trace's clock in ns; nothing is extrapolated beyond the traced run.", ""]
    for title, key in (("Stages", "stages"), ("Where the wall time goes", "wall"), ("How close to the hardware",
                                                                                    "efficiency"),
                       ("Decode steps", "steps"), ("Opportunities", "opportunities")):
        lines += [f"## {title}", ""] + [f"- **{term}**: {text}" for term, text in definitions(data)[key]] + [""]
    return "\n".join(lines)


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
