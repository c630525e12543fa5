"""report.html: one self-contained page (inline CSS, inline SVG plots, no scripts, no network).

Built from the metrics.json object of `analyze.report.build_report`. Plots are drawn with matplotlib
(imported here, lazily, so the rest of the analysis does not need it) and embedded as SVG text:
stage breakdown, decode step time over steps, kernel category mix per stage, per-page spread when
the trace has repeats, and the roofline of `analyze.roofline` when the metrics apply.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from dsocr_perf.analyze.out.table import _fmt_ms, _fmt_num, _fmt_pct, _plural, _short, fit_sentence, stage_table

CSS = """
body { font: 14px/1.45 -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 24px auto; padding: 0 20px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de;
     padding-bottom: 4px; } h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: #656d76; margin-bottom: 16px; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin: 12px 0; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 12px; background: #f6f8fa; }
.card .v { font-size: 20px; font-weight: 600; } .card .k { color: #656d76; font-size: 12px; }
.callout { border-left: 4px solid #bf8700; background: #fff8c5; padding: 10px 14px; border-radius: 4px; margin: 12px 0; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; } td:first-child, th:first-child, th.l { text-align: left; }
td.l { text-align: left; } code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
.plots { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.plot { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px; }
.plot svg, .plot img { width: 100%; height: auto; display: block; }
.warn li { color: #9a6700; } .muted { color: #656d76; }
"""

PALETTE = {"gemm": "#1f77b4", "attention": "#ff7f0e", "elementwise": "#2ca02c", "reduction": "#d62728",
           "moe": "#9467bd", "memory": "#8c564b", "memcpy/memset": "#8c564b", "communication": "#e377c2",
           "other": "#7f7f7f"}


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _table(header: list[str] | None, rows: list[list], left: int = 1) -> str:
    head = "".join(f'<th class="l">{_esc(h)}</th>' if i < left else f"<th>{_esc(h)}</th>" for i, h in enumerate(header or []))
    body = []
    for row in rows:
        cells = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


# ------------------------------------------------------------------------------------------- plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.fonttype": "none", "figure.dpi": 100})
    return plt


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE


def plot_breakdown(data: dict) -> str | None:
    parts = [p for p in data["breakdown"] if p["ns"] > 0]
    if not parts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 0.42 * len(parts) + 1.0))
    names = [p["part"] for p in parts][::-1]
    values = [p["ns"] / 1e6 for p in parts][::-1]
    bars = ax.barh(names, values, color="#1f77b4")
    for bar, p in zip(bars, parts[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {_fmt_pct(p['share'], 0)}", va="center", fontsize=8)
    ax.set_xlabel("GPU kernel time (ms)")
    ax.set_title("Where the kernel time goes")
    ax.set_xlim(0, max(values) * 1.18)
    return _svg(fig)


def plot_decode(data: dict) -> str | None:
    dec = data.get("decode")
    if not dec or not dec["by_step"]:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    by = dec["by_step"]
    steps = [s["step"] for s in by]
    ax.plot(steps, [s["mean_gpu_ns"] / 1e3 for s in by], marker="o", ms=3, label="GPU (kernels)")
    ax.plot(steps, [s["mean_wall_ns"] / 1e3 for s in by], marker=".", ms=3, alpha=0.7, label="wall (CPU range)")
    ax.set_xlabel("decode step")
    ax.set_ylabel("time per step (µs)")
    ax.set_ylim(bottom=0)
    kv = [s["kv_length"] for s in by]
    if all(k is not None for k in kv) and len(kv) > 1:
        top = ax.secondary_xaxis("top", functions=(lambda x, a=kv[0], s0=steps[0]: x - s0 + a,
                                                   lambda x, a=kv[0], s0=steps[0]: x - a + s0))
        top.set_xlabel("KV length (tokens)")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Decode step time over steps", pad=22 if all(k is not None for k in kv) else 6)
    return _svg(fig)


def plot_categories(data: dict) -> str | None:
    mix = {k: v for k, v in data["category_mix"].items() if sum(v.values()) > 0}
    if not mix:
        return None
    plt = _pyplot()
    categories = sorted({c for m in mix.values() for c in m}, key=lambda c: -data["category_mix"]["(all)"].get(c, 0))
    stages = list(mix)[::-1]
    fig, ax = plt.subplots(figsize=(5.6, 0.4 * len(stages) + 1.3))
    left = [0.0] * len(stages)
    for c in categories:
        shares = [100 * mix[s].get(c, 0) / sum(mix[s].values()) for s in stages]
        ax.barh(stages, shares, left=left, color=PALETTE.get(c, None), label=c)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the stage's GPU-op time (%)")
    ax.set_title("Kernel category mix per stage")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _svg(fig)


def plot_pages(data: dict) -> str | None:
    ds = data.get("dataset")
    if not ds or ds["requests"] < 2:
        return None
    plt = _pyplot()
    rows = [o for o in ds["overall"] if o["mean_ns"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 0.42 * len(rows) + 1.0))
    names = [o["stage"] for o in rows][::-1]
    means = [o["mean_ns"] / 1e6 for o in rows][::-1]
    lo = [(o["mean_ns"] - o["min_ns"]) / 1e6 for o in rows][::-1]
    hi = [(o["max_ns"] - o["mean_ns"]) / 1e6 for o in rows][::-1]
    ax.barh(names, means, xerr=[lo, hi], color="#2ca02c", alpha=0.8, capsize=3)
    ax.set_xlabel("GPU time per request (ms): mean, whiskers min..max")
    ax.set_title(f"Spread over {ds['requests']} requests")
    return _svg(fig)


def plot_roofline(data: dict, trace=None) -> str | None:
    """The roofline of analyze.roofline (one point per stage), embedded as SVG, when the stages have FLOPs."""
    from dsocr_perf.analyze.out.roofline import plot_roofline as draw
    from dsocr_perf.analyze.out.roofline import roofline_points

    rows = [r for r in data["stages"] if r["stage"] != "request"]
    if not roofline_points(rows):
        return None
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        paths = draw(rows, {"name": data["gpu"].get("name"), "peak_tflops": data["gpu"].get("peak_tflops"),
                            "peak_gbs": data["gpu"].get("peak_gbs")}, Path(tmp) / "roofline")
        svg = next((p for p in paths if p.suffix == ".svg"), None)
        if svg is not None:
            text = svg.read_text()
            return text[text.index("<svg"):]
        png = next(p for p in paths if p.suffix == ".png")
        return f'<img alt="roofline" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'


# -------------------------------------------------------------------------------------------- page

def render_html(data: dict, trace=None) -> str:
    name = Path(data["trace_info"]["path"]).name
    t = data["totals"]
    g = data["gpu"]
    parts = []
    title = "DeepSeek-OCR trace report" if data.get("dsocr_stages") else "Trace report"
    parts.append(f"<h1>{title}</h1><div class='sub'><code>{_esc(data['trace_info']['path'])}</code>"
                 f" &middot; {_esc(data['trace_info']['source'])} &middot; generated {_esc(data['generated_utc'])}</div>")
    cards = [("GPU kernel time", f"{_fmt_ms(t['kernel_ns'], 2)} ms"), ("kernels", f"{t['kernels']:,}"),
             ("GPU busy (first→last op)", _fmt_pct(t["gpu_busy_frac"], 0 if (t["gpu_busy_frac"] or 0) >= 0.1 else 1)),
             ("GPU", g.get("name") or "unknown")]
    if data.get("dataset"):
        tp = data["dataset"]["throughput"]
        cards[1] = ("pages/s · tokens/s",
                    f"{_fmt_num(tp.get('pages_per_s'), '{:.2f}')} · {_fmt_num(tp.get('tokens_per_s'), '{:.0f}')}")
    parts.append("<div class='cards'>" + "".join(
        f"<div class='card'><div class='k'>{_esc(k)}</div><div class='v'>{_esc(v)}</div></div>" for k, v in cards) + "</div>")
    if data.get("opportunity"):
        text = _esc(data["opportunity"]["text"]).replace("`", "")
        parts.append(f"<div class='callout'><b>Biggest opportunity.</b> {text}</div>")

    # setup and workload
    info = data["trace_info"]
    setup = [["trace", f"<code>{_esc(name)}</code> ({info['size_bytes']:,} bytes, sha256 {_esc(info['sha256'][:12])}…)"],
             ["exporter", _esc(data["trace_info"].get("exporter_version") or "-")],
             ["GPU", _esc(g.get("name") or "unknown") + (f", {g['sm_count']} SMs" if g.get("sm_count") else "")],
             ["peaks", _esc(f"{_fmt_num(g.get('peak_tflops'))} TFLOP/s ({g.get('dtype')}), "
                            f"{_fmt_num(g.get('peak_gbs'), '{:,.0f}')} GB/s — {g.get('source')}")
              if g.get("peak_tflops") or g.get("peak_gbs") else "unknown"]]
    if data.get("model_info"):
        setup.append(["model", _esc(", ".join(f"{k} {v}" for k, v in data["model_info"].items() if v is not None))])
    w = data.get("workload_full")
    if w:
        views = ", ".join(f"{v.get('count')}× {v.get('name')} {v.get('side')}px" for v in w.get("views") or [])
        setup += [["workload", _esc(f"mode {w.get('mode')}, image {w.get('image_width')}×{w.get('image_height')}, "
                                    f"tile grid {w.get('tile_grid')}, views {views}")],
                  ["tokens", _esc(f"{w.get('image_tokens')} image, {w.get('prompt_tokens')} prompt, "
                                  f"{w.get('generated_tokens')} generated")]]
    else:
        setup.append(["workload", "<span class='muted'>no workload in the trace's manifest (or no manifest): shapes, "
                              "FLOPs and MFU unknown</span>"])
    parts.append("<h2>Setup and workload</h2>" + _table(None, setup, left=2))

    # stage table
    header, rows = stage_table(data, name_cell=lambda name: f"<code>{_esc(name)}</code>", text_cell=_esc)
    parts.append("<h2>Stages</h2><p class='muted'>Inclusive = kernels launched inside the stage's ranges (nested stages "
                 "count in their parents too); busy = union of their intervals; CPU = wall time of the ranges.</p>"
                 + _table(header, rows))

    # plots
    try:
        plots = [plot_breakdown(data), plot_decode(data), plot_categories(data), plot_pages(data),
                 plot_roofline(data, trace)]
    except ImportError:  # matplotlib is not installed: the page keeps its tables
        plots = []
        parts.append("<p class='muted'>Plots need matplotlib (<code>pip install matplotlib</code>).</p>")
    plots = [p for p in plots if p]
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>" + "".join(f"<div class='plot'>{p}</div>" for p in plots) + "</div>")
    if not any(r.get("flops") for r in data["stages"]):
        parts.append("<p class='muted'>Roofline: not drawn, the stages have no FLOPs/bytes (no manifest or no metrics).</p>")

    # dataset
    ds = data.get("dataset")
    if ds:
        tp = ds["throughput"]
        parts.append(f"<h2>Pages and repeats</h2><p>{_plural(ds['requests'], 'request')} over "
                     f"{_plural(ds['pages'], 'page')}, up to {_plural(ds['max_repeats'], 'repeat')} each. "
                     f"Throughput {_fmt_num(tp.get('pages_per_s'), '{:,.2f}')} pages/s, "
                     f"{_fmt_num(tp.get('tokens_per_s'), '{:,.1f}')} tokens/s end to end, "
                     f"{_fmt_num(tp.get('decode_tokens_per_s'), '{:,.1f}')} tokens/s in decode.</p>")
        parts.append(_table(["stage", "n", "mean ms", "std ms", "min ms", "max ms", "cv", "repeat cv"],
                            [[_esc(o["stage"]), o["n"], _fmt_ms(o["mean_ns"]), _fmt_ms(o["std_ns"]), _fmt_ms(o["min_ns"]),
                              _fmt_ms(o["max_ns"]), _fmt_pct(o["cv"]), _fmt_pct(o.get("repeat_cv"))] for o in ds["overall"]]))

    # top kernels
    parts.append("<h2>Top kernels per stage</h2>")
    for stage, kernels in data["top_kernels"].items():
        if kernels:
            parts.append(f"<h3><code>{_esc(stage)}</code></h3>" + _table(
                ["kernel", "category", "count", "total ms", "share of stage"],
                [[f"<code title='{_esc(k['name'])}'>{_esc(_short(k['label'], 80))}</code>", _esc(k["category"]),
                  k["instances"], _fmt_ms(k["total_ns"]), _fmt_pct(k["share"])] for k in kernels], left=2))

    # category mix
    mix = data["category_mix"]
    categories = sorted({c for m in mix.values() for c in m}, key=lambda c: -mix["(all)"].get(c, 0))
    rows = []
    for stage, m in mix.items():
        total = sum(m.values())
        rows.append([f"<code>{_esc(stage)}</code>"] + [_fmt_pct(m.get(c, 0) / total if total else None, 0) for c in categories])
    parts.append("<h2>Kernel category mix</h2>" + _table(["stage"] + categories, rows))

    # decode
    dec = data.get("decode")
    parts.append("<h2>Decode step time vs context length</h2>")
    if dec:
        fit = dec.get("fit")
        if fit:
            parts.append(f"<p>{_esc(fit_sentence(dec))}</p>")
        by = dec["by_step"]
        shown = by if len(by) <= 12 else by[:6] + [None] + by[-5:]
        parts.append(_table(["step", "KV length", "n", "mean GPU ms", "mean wall ms"],
                            [["…", "", "", "", ""] if s is None else
                             [s["step"], "-" if s["kv_length"] is None else f"{s['kv_length']:,}", s["n"],
                              _fmt_ms(s["mean_gpu_ns"]), _fmt_ms(s["mean_wall_ns"])] for s in shown]))
    else:
        parts.append("<p class='muted'>No decode_step ranges in this trace.</p>")

    warnings = data["warnings"]
    parts.append("<h2>Warnings</h2>" + ("<ul class='warn'>" + "".join(f"<li>{_esc(w)}</li>" for w in warnings) + "</ul>"
                                         if warnings else "<p class='muted'>none</p>"))
    parts.append("<p class='muted'>Numbers: metrics.json beside this file. Definitions: assumptions.md.</p>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>Report: {_esc(name)}</title><style>{CSS}</style></head><body>\n" + "\n".join(parts)
            + "\n</body></html>\n")
