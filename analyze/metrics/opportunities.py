"""Ranked opportunities: the time each fix could recover, what it does to throughput, and the evidence.

Computed from measured numbers and the roofline, for any model whose stages the trace names:
  gpu_idle      a top-level stage's GPU-idle time (its idle less the time the GPU ran other work):
                what keeping the GPU fed would recover (fewer launches, no host syncs, CUDA graphs);
  roofline      a leaf stage's busy time beyond what its kernels would need at the roof
                (busy x (1 - roof share)): what better kernels would recover once they run back to back;
  host_overlap  preprocess runs on the CPU while the GPU has nothing to do: pipelining pages hides it.
Throughput is tokens/s for decode (generated tokens / decode wall time) and pages/s otherwise
(requests / page wall time), before and after the fix, and after it and every fix ranked above it.
The top three by recoverable time are kept.
"""
from __future__ import annotations

from dsocr_perf.dsocr import stages as S

TOP = 3
LEAVES = (S.SAM, S.CLIP, S.PROJECTOR, S.LLM_PREFILL, S.DECODE)
TOP_LEVEL = (S.PREPROCESS, S.PREFILL, S.DECODE)
QUERIES = {"gpu_idle": "sql/idle_causes_per_stage.sql", "roofline": "sql/top_kernels_per_stage.sql",
           "host_overlap": "sql/idle_causes_per_stage.sql"}


def opportunities(stages: dict, doc: dict, trace) -> list[dict]:
    page_wall = _page_wall(stages)
    tokens = doc["step_summary"]["steps"] or None
    decode = stages.get(S.DECODE)
    candidates = []
    for name in TOP_LEVEL:
        row = stages.get(name)
        if not row or not row["wall_ns"]:
            continue
        gpu_idle = row["idle_ns"] - row["idle_causes_ns"]["gpu_other"]
        if name == S.PREPROCESS and gpu_idle > 0:
            candidates.append(_candidate("host_overlap", row, gpu_idle, _evidence(row, tokens)))
        elif row["kernels"] and gpu_idle > 0:
            candidates.append(_candidate("gpu_idle", row, gpu_idle, _evidence(row, tokens)))
    for name in LEAVES:
        row = stages.get(name)
        if row and row.get("roof_busy_pct") and row["busy_ns"]:
            share = min(row["roof_busy_pct"], 100.0) / 100.0
            candidates.append(_candidate("roofline", row, round(row["busy_ns"] * (1 - share)),
                                         {"roof_busy_pct": row["roof_busy_pct"], "mbu_busy_pct": row["mbu_busy_pct"],
                                          "mfu_busy_pct": row["mfu_busy_pct"], "bound": row["bound"],
                                          "intensity_flop_per_byte": row["intensity_flop_per_byte"]}))
    candidates.sort(key=lambda c: -c["recoverable_ns"])
    decode_saved = page_saved = 0
    out = []
    for rank, c in enumerate(candidates[:TOP], 1):
        page_saved += c["recoverable_ns"]
        if c["stage"] == S.DECODE and tokens and decode:
            decode_saved += c["recoverable_ns"]
            wall, count, unit, saved = decode["wall_ns"], tokens, "tokens/s", decode_saved
        elif page_wall:
            (wall, count), unit, saved = page_wall, "pages/s", page_saved
        else:
            wall, count, unit, saved = None, None, None, 0
        out.append({"rank": rank, **c, "unit": unit, "before_per_s": _rate(count, wall),
                    "after_per_s": _rate(count, wall - c["recoverable_ns"] if wall else None),
                    "after_with_above_per_s": _rate(count, wall - saved if wall else None),
                    "query": QUERIES[c["kind"]]})
    return out


def _candidate(kind: str, row: dict, ns: int, evidence: dict) -> dict:
    stage = row["stage"]
    if kind == "gpu_idle":
        title = f"{stage}: the GPU waits for the host {100 * (row['idle_frac'] or 0):.0f}% of the wall time"
    elif kind == "roofline":
        title = f"{stage}: kernels at {row['roof_busy_pct']:.0f}% of their roof while busy"
    else:
        title = f"{stage}: {row['wall_ns'] / 1e6:,.1f} ms of CPU work with the GPU idle"
    return {"kind": kind, "stage": stage, "title": title, "recoverable_ns": int(ns),
            "recoverable_frac": ns / row["wall_ns"] if row["wall_ns"] else None, "evidence": evidence}


def _evidence(row: dict, tokens) -> dict:
    per = row["instances"] or 1
    steps = tokens if row["stage"] == S.DECODE and tokens else None
    unit = steps or per
    causes = row["idle_causes_ns"]
    return {"per": "decode step" if steps else "instance", "wall_ns": row["wall_ns"], "busy_ns": row["busy_ns"],
            "idle_causes_ns": causes,
            "kernel_launches_per": row["kernel_launches"] / unit, "host_syncs_per": row["host_syncs"] / unit,
            "memcpy_DtoH_per": row["memcpy"]["DtoH"] / unit, "api_calls_per": row["api_calls"] / unit}


def _page_wall(stages: dict) -> tuple[int, int] | None:
    """(wall ns of the pages, number of pages): the request ranges, else the top-level stages."""
    request = stages.get(S.REQUEST)
    if request and request["wall_ns"]:
        return request["wall_ns"], request["instances"]
    top = [stages[s] for s in TOP_LEVEL if s in stages]
    if not top:
        return None
    pages = stages.get(S.PREFILL, top[0])["instances"] or 1
    return sum(r["wall_ns"] for r in top), pages


def _rate(count, wall_ns) -> float | None:
    return count / (wall_ns / 1e9) if count and wall_ns and wall_ns > 0 else None
