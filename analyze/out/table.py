"""Text formatting shared by every output: aligned plain-text tables for the terminal, number
formats, and the pieces the Markdown and HTML reports share (no dependencies)."""
from __future__ import annotations

import math


def render(headers: list[str], rows: list[list], align: str | None = None, max_width: int = 60) -> str:
    """Columns separated by two spaces; `align` has one 'l' or 'r' per column (default: text left,
    numbers right). Cells longer than `max_width` are cut with '…'."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    if align is None:
        align = "".join("r" if rows and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) else "l"
                        for i in range(len(headers)))
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        parts = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _cell(value, max_width: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    return middle(str(value), max_width)


def middle(text: str, width: int) -> str:
    """Cut from the middle, so both ends stay: kernel names differ at the end (their functor) as
    often as at the start."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def ms(ns) -> str:
    """Nanoseconds as milliseconds with 3 decimals ('' for None)."""
    return "" if ns is None else f"{ns / 1e6:,.3f}"


def pct(part, whole) -> str:
    if part is None or not whole:
        return ""
    return f"{100.0 * part / whole:.1f}%"


def num(value, fmt: str, scale: float = 1.0) -> str:
    """A number formatted, '-' where it does not exist."""
    return "-" if value is None else format(value / scale, fmt)


# ---------------------------------------------------------------- shared by the reports (md and html)

def _fmt_ms(ns, digits=3) -> str:
    return "-" if ns is None else f"{ns / 1e6:,.{digits}f}"


def _fmt_pct(x, digits=1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _fmt_num(x, fmt="{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _short(name: str, limit: int = 70) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def fit_sentence(dec: dict) -> str:
    """The least-squares line of mean GPU time per step, read at the first and last step."""
    fit, by = dec["fit"], dec["by_step"]
    x = fit["x"]
    first, last = by[0][x], by[-1][x]
    at = lambda v: (fit["intercept_ns"] + fit["slope_ns"] * v) / 1e3
    unit = "token of context" if x == "kv_length" else "step"
    where = "KV length" if x == "kv_length" else "step"
    return (f"Least-squares fit of the mean GPU time per step: {fit['slope_ns']:+,.2f} ns per {unit}, "
            f"{at(first):,.1f} µs at {where} {first:,} to {at(last):,.1f} µs at {where} {last:,} "
            f"(r² = {_fmt_num(fit.get('r2'), '{:.3f}')}).")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")




def _fmt_rate(x) -> str:
    """A throughput with three significant digits or more (0.244 pages/s, 32.7 tokens/s, 327 tokens/s)."""
    if x is None:
        return "-"
    digits = 0 if x >= 100 else 1 if x >= 10 else 2 if x >= 1 else 3
    return f"{x:,.{digits}f}"


# ------------------------------------------------------ the report's stage tables (report.md and report.html)

# The idle causes in the order the report shows them, with their column titles.
CAUSES = (("host", "host"), ("launch", "launch"), ("sync", "sync"), ("memcpy", "memcpy"), ("other_api", "other API"),
          ("gpu_other", "GPU other"))


def stage_name(row: dict, dsocr: bool) -> str:
    """A DeepSeek-OCR stage by its bare name (`sam`), any other range by its full name."""
    return row["stage"] if dsocr else row["name"]


def shown_name(name: str, dsocr: bool) -> str:
    """A range name as the report shows it: DeepSeek-OCR stages without their domain (`dsocr:sam` -> `sam`)."""
    return name.split(":", 1)[1] if dsocr and ":" in name else name


def tree_marks(rows: list[dict]) -> list[str]:
    """Per row: '' at the top level, '├ ' for a child, '└ ' for its parent's last child (rows in tree order)."""
    marks = []
    for i, row in enumerate(rows):
        if not row.get("parent"):
            marks.append("")
            continue
        following = rows[i + 1] if i + 1 < len(rows) else None
        marks.append("└ " if following is None or following.get("parent") != row["parent"] else "├ ")
    return marks


def stage_table(rows: list[dict], names: list[str]) -> tuple[list[str], list[list[str]]]:
    """Attribution per stage: wall and busy time, then where the kernel time is counted."""
    header = ["stage", "n", "wall ms", "busy ms", "idle %", "GPU ms", "GPU %", "excl ms", "span ms", "kernels", "launches"]
    cells = [[name, f"{r['instances']:,}", _fmt_ms(r["wall_ns"]), _fmt_ms(r["busy_ns"]), _fmt_pct(r["idle_frac"]),
              _fmt_ms(r["inclusive_ns"]), _fmt_pct(r["inclusive_frac"]), _fmt_ms(r["exclusive_ns"]),
              _fmt_ms(r["span_ns"]), f"{r['kernels']:,}", f"{r['launches']:,}"] for r, name in zip(rows, names)]
    return header, cells


def wall_table(rows: list[dict], names: list[str]) -> tuple[list[str], list[list[str]]]:
    """Where each stage's wall time goes: busy, then its idle time split by cause; the counts behind it."""
    header = (["stage", "wall ms", "busy ms", "idle ms"] + [f"{title} ms" for _, title in CAUSES]
              + ["kernel launches", "syncs", "DtoH", "bound"])
    cells = [[name, _fmt_ms(r["wall_ns"]), _fmt_ms(r["busy_ns"]), _fmt_ms(r["idle_ns"])]
             + [_fmt_ms(r["idle_causes_ns"][cause]) for cause, _ in CAUSES]
             + [f"{r['kernel_launches']:,}", f"{r['host_syncs']:,}", f"{r['memcpy']['DtoH']:,}", r["bound"] or "-"]
             for r, name in zip(rows, names)]
    return header, cells


def efficiency_table(rows: list[dict], names: list[str]) -> tuple[list[str], list[list[str]]]:
    """FLOPs and bytes of the stages that have them, their rates over busy and over wall time, the roof."""
    header = ["stage", "busy ms", "GFLOP", "TFLOP/s", "MFU busy", "MFU wall", "GB", "GB/s", "MBU busy", "MBU wall",
              "FLOP/B", "roof %", "bound"]
    cells = [[name, _fmt_ms(r["busy_ns"]), num(r["flops"], ",.1f", 1e9), num(r["tflop_per_s_busy"], ",.1f"),
              _pct_points(r["mfu_busy_pct"], 1), _pct_points(r["mfu_wall_pct"], 2), num(r["bytes"], ",.2f", 1e9),
              num(r["gb_per_s_busy"], ",.0f"), _pct_points(r["mbu_busy_pct"], 1), _pct_points(r["mbu_wall_pct"], 2),
              num(r["intensity_flop_per_byte"], ",.1f"), _pct_points(r["roof_busy_pct"], 1), r["bound"] or "-"]
             for r, name in zip(rows, names) if r["flops"] is not None or r["bytes"] is not None]
    return header, cells


def _pct_points(value, digits: int) -> str:
    """A value already in percent (mfu_busy_pct) with its sign."""
    return "-" if value is None else f"{value:.{digits}f}%"


# ----------------------------------------------------------------- definitions printed under the tables

def definitions(data: dict) -> dict[str, list[tuple[str, str]]]:
    """Per report section, (term, meaning) pairs; thresholds and the ridge come from the code that uses them."""
    from dsocr_perf.analyze.metrics.efficiency import IDLE_SHARE, ROOF_SHARE
    from dsocr_perf.analyze.out.document import SHIFT_SHARE, SLOW_STEP

    gpu = data.get("gpu") or {}
    ridge = (f"; the ridge is at {gpu['peak_tflops'] * 1e3 / gpu['peak_gbs']:,.0f} FLOP/B on this GPU"
             if gpu.get("peak_tflops") and gpu.get("peak_gbs") else "")
    idle_pct, roof_pct = f"{100 * IDLE_SHARE:.0f}%", f"{100 * ROOF_SHARE:.0f}%"
    bound = (f"the limiter, decided in this order. host or launch: the GPU is idle for at least {idle_pct} of the wall "
             "time (GPU other work not counted); launch when the time in launch calls is at least the rest of that "
             "idle time (host + sync + memcpy + other API) together, else host. Otherwise, from the kernels while busy: "
             f"compute or memory when they reach at least {roof_pct} of their roof (compute right of the ridge, "
             f"memory left of it){ridge}; latency below {roof_pct} (small or dependent kernels that neither roof "
             "explains).")
    return {
        "stages": [
            ("wall", "the range's own duration on its host thread (push to pop), summed over its instances (n)."),
            ("busy", "the length of the union of the intervals of the kernels launched inside the range: overlapping "
                     "kernels count once."),
            ("idle", "wall − busy (never below zero): the wall time the range's own kernels did not fill; idle % = "
                     "idle / wall."),
            ("GPU ms", "the summed duration of the kernels launched inside the range, nested ranges included (as nsys "
                       "nvtx_kern_sum counts); GPU % = of all kernel time in the trace."),
            ("excl", "only the kernels whose innermost range it is (the exclusive times of all ranges sum to the "
                     "attributed kernel time)."),
            ("span", "first kernel start to last kernel end (as nsys nvtx_gpu_proj_sum)."),
            ("kernels, launches", "kernels launched inside the range; API calls that launched GPU work (kernels, "
                                  "copies, memsets)."),
        ],
        "wall": [
            ("idle causes", "idle time split by what happened while the range's own kernels were not running; the "
                            "causes sum to idle."),
            ("host", "the GPU was idle and the range's thread was outside CUDA: its own CPU work (Python, the "
                     "framework, image preprocessing)."),
            ("launch", "the GPU was idle and the thread was inside a launch call (kernel, memset, CUDA-graph launch)."),
            ("sync", "the GPU was idle and the thread waited in a synchronising call (stream, event or device "
                     "synchronise)."),
            ("memcpy", "the GPU was idle and the thread was in a memory-copy call (a blocking device-to-host copy "
                       "waits here)."),
            ("other API", "the GPU was idle and the thread was in another CUDA runtime or driver call."),
            ("GPU other", "the GPU was running other work (launched earlier or elsewhere), just not this range's."),
            ("kernel launches, syncs, DtoH", "calls that launched kernels; synchronising calls; device-to-host copies."),
            ("bound", bound),
        ],
        "efficiency": [
            ("GFLOP, GB", "the analytic FLOPs and bytes of the recorded workload (dsocr.flops, from the trace's "
                          "manifest), not hardware counters."),
            ("MFU, MBU busy", "achieved FLOP/s (bytes/s) over the busy time, as a share of the GPU's peak: how good "
                              "the kernels are while they run."),
            ("MFU, MBU wall", "the same over the wall time: what the stage gets out of the GPU, host waits included."),
            ("FLOP/B", "arithmetic intensity, FLOPs per byte moved."),
            ("roof %", "achieved FLOP/s over busy time / min(peak FLOP/s, bandwidth × intensity): the distance to the "
                       "roofline at the stage's own intensity."),
            ("bound", bound),
        ],
        "steps": [
            ("step", "one decode_step range: one generated token; wall, busy and idle as for the stages."),
            ("level shift", "the split of the step sequence that best separates two levels of wall time, reported when "
                            f"the two means differ by more than {100 * SHIFT_SHARE:.0f}% of the median."),
            ("slow step", f"a step whose wall time is above {SLOW_STEP:g}× the median."),
            ("tokens/s", "steps / their summed wall time, measured under tracing (nsys adds some host cost per "
                         "CUDA call)."),
        ],
        "opportunities": [
            ("recover", "the time the fix could remove, from measured numbers: a stage's GPU-idle time (idle less GPU "
                        "other work) for 'waits for the host' and preprocessing, busy × (1 − roof %) for 'kernels at "
                        "x% of their roof'. % = of the stage's wall time."),
            ("throughput", "tokens/s for decode (generated tokens / decode wall time), pages/s otherwise (pages / page "
                           "wall time), measured under tracing; before → after the fix alone, and → after it together "
                           "with the fixes ranked above it."),
        ],
    }


# ------------------------------------------------------------------------------- opportunities and steps

def opportunity_parts(o: dict) -> dict[str, str]:
    """The pieces of one ranked opportunity as text: title, recover, throughput (with →), evidence, query."""
    recover = f"{_fmt_ms(o['recoverable_ns'])} ms"
    if o.get("recoverable_frac") is not None:
        recover += f" ({_fmt_pct(o['recoverable_frac'], 0)} of {o['stage']}'s wall time)"
    throughput = "-"
    if o.get("before_per_s") is not None:
        throughput = f"{_fmt_rate(o['before_per_s'])} → {_fmt_rate(o['after_per_s'])} {o['unit']}"
        if o["rank"] > 1 and o.get("after_with_above_per_s") is not None:
            throughput += f" (→ {_fmt_rate(o['after_with_above_per_s'])} with the fixes above)"
    return {"title": o["title"], "recover": recover, "throughput": throughput, "evidence": _evidence(o),
            "query": f"dsocr-analyze sql TRACE -f {o['query']}"}


def _evidence(o: dict) -> str:
    e = o["evidence"]
    if "idle_causes_ns" in e:
        causes = e["idle_causes_ns"]
        total = sum(causes.values()) or 1
        labels = dict(CAUSES)
        top = [(k, v) for k, v in sorted(causes.items(), key=lambda kv: -kv[1]) if v > 0][:3]
        split = ", ".join(f"{labels[k]} {100 * v / total:.0f}%" for k, v in top) or "none"
        return (f"per {e['per']}: {e['kernel_launches_per']:,.0f} kernel launches, {e['host_syncs_per']:,.0f} host "
                f"syncs, {e['memcpy_DtoH_per']:,.0f} device-to-host copies; idle time: {split}")
    return (f"while busy: MBU {_pct_points(e.get('mbu_busy_pct'), 1)}, MFU {_pct_points(e.get('mfu_busy_pct'), 1)}, "
            f"{num(e.get('intensity_flop_per_byte'), ',.1f')} FLOP/B, {e.get('bound') or 'unknown'}-bound")


def step_sentences(summary: dict) -> list[str]:
    """The decode-step summary of the document in sentences."""
    from dsocr_perf.analyze.out.document import SLOW_STEP

    if not summary.get("steps"):
        return []
    lines = [f"{summary['steps']:,} decode steps: wall median {_fmt_ms(summary['median_wall_ns'])} ms "
             f"(mean {_fmt_ms(summary['mean_wall_ns'])} ms, p90 {_fmt_ms(summary['p90_wall_ns'])} ms); "
             f"GPU busy median {_fmt_ms(summary['median_busy_ns'])} ms per step."]
    shift = summary.get("level_shift")
    if shift:
        lines.append(f"Level shift at step {shift['at_step']}: mean wall {_fmt_ms(shift['before_mean_ns'])} ms "
                     f"→ {_fmt_ms(shift['after_mean_ns'])} ms per step.")
    slow = summary.get("slow_steps") or []
    if slow:
        shown = ", ".join(step_names(summary)[:10]) + (f" and {len(slow) - 10} more" if len(slow) > 10 else "")
        lines.append(f"{len(slow)} slow steps (wall above {SLOW_STEP:g}× the median): {shown}.")
    if summary.get("tokens_per_s_under_tracing"):
        lines.append(f"Decode: {_fmt_rate(summary['tokens_per_s_under_tracing'])} tokens/s, measured under tracing.")
    return lines


TIMELINE_LANES = (("launch", "launch calls", "launch"), ("sync", "sync calls", "sync"),
                  ("memcpy", "memcpy calls", "memcpy"), ("other", "other CUDA calls", "other_api"))


def timeline_table(tl: dict) -> tuple[list[str], list[list[str]]]:
    """The host thread of the timeline's step: time in each kind of CUDA call, and the GPU idle time charged to it."""
    causes = tl["idle_causes_ns"]
    header = ["host thread", "calls", "time ms", "GPU idle ms"]
    cells = [[title, f"{tl['host'][kind]['calls']:,}", _fmt_ms(tl["host"][kind]["ns"]), _fmt_ms(causes[cause])]
             for kind, title, cause in TIMELINE_LANES]
    cells.append(["outside CUDA (host)", "-", _fmt_ms(tl["outside_cuda_ns"]), _fmt_ms(causes["host"])])
    return header, cells


def timeline_sentence(tl: dict) -> str:
    busy_frac = tl["busy_ns"] / tl["wall_ns"] if tl["wall_ns"] else None
    return (f"Decode step {tl['step']} (the median wall time): {_fmt_ms(tl['wall_ns'])} ms wall; the GPU ran its "
            f"{tl['kernels']:,} kernels for {_fmt_ms(tl['busy_ns'])} ms busy ({_fmt_pct(busy_frac)}), other GPU work "
            f"{_fmt_ms(tl['idle_causes_ns']['gpu_other'])} ms; the rest of the wall time the GPU waited for the thread below.")


# --------------------------------------------------------------------- sentences and rows both reports show

def headline(data: dict) -> str:
    """GPU, workload and exporter in one line."""
    parts = [data["gpu"].get("name") or "unknown GPU"]
    w = data.get("workload_full")
    if w:
        grid = w.get("tile_grid")
        tiles = f", tiles {grid[0]}×{grid[1]}" if isinstance(grid, list) and len(grid) == 2 else ""
        parts.append(f"{w.get('mode')} page{tiles}, {w.get('image_tokens')} image tokens, "
                     f"{w.get('generated_tokens')} generated")
    info = data["trace_info"]
    parts.append(f"{info['source']} {info.get('exporter_version') or ''}".strip())
    return " · ".join(parts)


def peaks_sentence(data: dict) -> str:
    g = data["gpu"]
    return (f"Peaks of {g.get('name') or 'the GPU'}: {_fmt_num(g.get('peak_tflops'))} TFLOP/s "
            f"({g.get('dtype') or 'dense'}), {_fmt_num(g.get('peak_gbs'), '{:,.0f}')} GB/s; FLOPs and bytes from the "
            f"manifest's workload (attention counted: {data.get('attention_policy') or 'full'}).")


def model_sentence(m: dict) -> str:
    return (f"Model level (prefill + decode): {_fmt_num((m.get('flops') or 0) / 1e9)} GFLOP in "
            f"{_fmt_ms(m.get('busy_ns'))} ms busy, {_fmt_ms(m.get('wall_ns'))} ms wall: MFU "
            f"{_pct_points(m.get('mfu_busy_pct'), 1)} busy, {_pct_points(m.get('mfu_wall_pct'), 2)} wall; MBU "
            f"{_pct_points(m.get('mbu_busy_pct'), 1)} busy, {_pct_points(m.get('mbu_wall_pct'), 2)} wall.")


def step_rows(steps: list[dict], head: int = 6, tail: int = 5) -> tuple[list[str], list[list[str]]]:
    """The first and last decode steps (all when few), '…' between."""
    several = len({s["request"] for s in steps}) > 1
    header = (["request"] if several else []) + ["step", "KV length", "wall ms", "busy ms", "idle ms", "kernels",
                                                 "launches", "syncs"]
    shown = steps if len(steps) <= head + tail + 1 else steps[:head] + [None] + steps[-tail:]
    rows = []
    for s in shown:
        if s is None:
            rows.append(["…"] + [""] * (len(header) - 1))
            continue
        rows.append(([str(s["request"])] if several else []) + [
            str(s["step"]), "-" if s["kv_length"] is None else f"{s['kv_length']:,}", _fmt_ms(s["wall_ns"]),
            _fmt_ms(s["busy_ns"]), _fmt_ms(s["idle_ns"]), f"{s['kernels']:,}", f"{s['kernel_launches']:,}",
            f"{s['host_syncs']:,}"])
    return header, rows


def category_rows(mix: dict, dsocr: bool) -> tuple[list[str], list[list[str]]]:
    categories = sorted({c for m in mix.values() for c in m}, key=lambda c: -mix.get("(all)", {}).get(c, 0))
    rows = []
    for stage, m in mix.items():
        total = sum(m.values())
        rows.append([shown_name(stage, dsocr)] + [_fmt_pct(m.get(c, 0) / total if total else None, 0) for c in categories])
    return ["stage"] + categories, rows


def dataset_sentence(d: dict) -> str:
    tp = d["throughput"]
    return (f"{_plural(d['requests'], 'request')} over {_plural(d['pages'], 'page')}, up to "
            f"{_plural(d['max_repeats'], 'repeat')} each"
            + ("" if d["pages_known"] else " (no manifest: each request counted as its own page)")
            + f". Throughput, measured under tracing: {_fmt_rate(tp.get('pages_per_s'))} pages/s, "
            f"{_fmt_rate(tp.get('tokens_per_s'))} tokens/s end to end, {_fmt_rate(tp.get('decode_tokens_per_s'))} "
            "tokens/s in decode.")


def dataset_rows(d: dict) -> tuple[list[str], list[list[str]]]:
    """Stage GPU time per request over all requests (decode_step left out: its sum per request is decode's)."""
    header = ["stage", "n", "mean ms", "std ms", "min ms", "max ms", "cv", "repeat cv"]
    rows = [[o["stage"], str(o["n"]), _fmt_ms(o["mean_ns"]), _fmt_ms(o["std_ns"]), _fmt_ms(o["min_ns"]),
             _fmt_ms(o["max_ns"]), _fmt_pct(o["cv"]), _fmt_pct(o.get("repeat_cv"))]
            for o in d["overall"] if o["stage"] != "decode_step"]
    return header, rows


def setup_rows(data: dict) -> list[list[str]]:
    """(what, text) rows of the setup table: the trace, the GPU and its peaks, model, workload, capture."""
    g, info = data["gpu"], data["trace_info"]
    rows = [["trace", f"{info['path']} ({info['source']}, {info['size_bytes']:,} bytes, sha256 {info['sha256'][:12]}…)"],
            ["exporter", info.get("exporter_version") or "-"],
            ["GPU", (g.get("name") or "unknown") + (f", {g['sm_count']} SMs" if g.get("sm_count") else "")],
            ["peaks", (f"{_fmt_num(g.get('peak_tflops'))} TFLOP/s ({g.get('dtype')}), "
                       f"{_fmt_num(g.get('peak_gbs'), '{:,.0f}')} GB/s ({g.get('source')})")
             if g.get("peak_tflops") or g.get("peak_gbs") else "unknown"]]
    if data.get("model_info"):
        rows.append(["model", ", ".join(f"{k} {v}" for k, v in data["model_info"].items() if v is not None)])
    w = data.get("workload_full")
    if w:
        views = ", ".join(f"{v.get('count')}× {v.get('name')} {v.get('side')} px" for v in w.get("views") or [])
        rows += [["workload", f"mode {w.get('mode')}, image {w.get('image_width')}×{w.get('image_height')}, tile grid "
                              f"{w.get('tile_grid')}, views {views or '-'}"],
                 ["tokens", f"{w.get('image_tokens')} image, {w.get('prompt_tokens')} prompt, "
                            f"{w.get('generated_tokens')} generated"]]
    else:
        rows.append(["workload", "no workload in the trace's manifest (or no manifest): shapes, FLOPs and MFU unknown"])
    env = data.get("environment")
    if isinstance(env, dict):
        captured = ", ".join(f"{k} {env[k]}" for k in ("driver", "cuda", "torch", "nsys") if env.get(k))
        if captured:
            rows.append(["capture env", captured])
    return rows


def step_names(summary: dict) -> list[str]:
    """The slow steps as text: '12', or 'request 1 step 12' when the trace holds several requests."""
    requests = summary.get("slow_step_requests") or [None] * len(summary["slow_steps"])
    several = (summary.get("requests") or 1) > 1
    return [f"request {r} step {s}" if several else str(s) for s, r in zip(summary["slow_steps"], requests)]
