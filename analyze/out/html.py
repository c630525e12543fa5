"""report.html: one self-contained page (inline CSS, inline SVG figures, no scripts, no network).

Built from the metrics.json object of `analyze.out.report.build_report`, section for section like
report.md, with the same tables and definitions (analyze.out.table), plus figures drawn with
matplotlib (imported here, lazily, so the rest of the analysis does not need it) and embedded as SVG
whose text stays text: where each stage's wall time goes, wall and busy time per decode step, the
timeline of the median decode step, the roofline, the kernel category mix, the spread over requests.
The page reads at 800 px: wide tables scroll inside their own box, the page itself never does.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from dsocr_perf.analyze.out.table import (
    CAUSES,
    _fmt_ms,
    _fmt_pct,
    _fmt_rate,
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

CSS = """
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1120px; margin: 0 auto; padding: 20px 20px 40px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0 10px; }
h1, h2, h3, p, li, dd, .card { overflow-wrap: anywhere; }   /* long range and kernel names wrap, the page stays put */
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
.sub { color: #656d76; margin-bottom: 12px; overflow-wrap: anywhere; }
nav { font-size: 13px; margin: 8px 0 4px; display: flex; flex-wrap: wrap; gap: 4px 14px; }
nav a { color: #0969da; text-decoration: none; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 10px; margin: 12px 0; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px; background: #f6f8fa; }
.card .v { font-size: 19px; font-weight: 600; } .card .k { color: #656d76; font-size: 12px; }
ol.opps { padding-left: 0; list-style: none; margin: 8px 0; }
ol.opps li { border: 1px solid #d0d7de; border-left: 4px solid #bf8700; border-radius: 4px; padding: 8px 12px;
             margin: 8px 0; background: #fffbea; }
.opp-title { font-weight: 600; }
.opp-facts { display: flex; flex-wrap: wrap; gap: 2px 22px; margin: 2px 0; }
.scroll { overflow-x: auto; max-width: 100%; margin: 6px 0 10px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; white-space: normal; vertical-align: bottom; }
th.l, td.l { text-align: left; }
td.wrap { white-space: normal; min-width: 16em; overflow-wrap: anywhere; }
td.tree-mid, td.tree-end { padding-left: 22px; }
td.tree-mid::before { content: "├ "; color: #8c959f; }
td.tree-end::before { content: "└ "; color: #8c959f; }
dl.defs { font-size: 13px; color: #454c54; margin: 4px 0 12px; }
dl.defs dt { font-weight: 600; display: inline; } dl.defs dt::after { content: ": "; }
dl.defs dd { display: inline; margin: 0; } dl.defs dd::after { content: ""; display: block; margin-bottom: 3px; }
.figure { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px; margin: 10px 0; }
.figure svg, .figure img { width: 100%; max-width: 880px; height: auto; display: block; margin: 0 auto; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 12px; }
.figures .figure { margin: 0; }
.muted { color: #656d76; } .warn li { color: #9a6700; }
"""

# One colour per part of the wall time, the same in every figure.
COLORS = {"busy": "#1f77b4", "host": "#a0a7b0", "launch": "#ff7f0e", "sync": "#d62728", "memcpy": "#8c564b",
          "other_api": "#9467bd", "gpu_other": "#aec7e8", "wall": "#3a3f44", "shift": "#bf8700"}
LANE_GREY = "#eef0f2"
PALETTE = {"gemm": "#1f77b4", "attention": "#ff7f0e", "elementwise": "#2ca02c", "reduction": "#d62728",
           "moe": "#9467bd", "memory": "#8c564b", "memcpy/memset": "#8c564b", "communication": "#e377c2",
           "other": "#7f7f7f"}
SECTIONS = (("opportunities", "Top opportunities"), ("stages", "Stages"), ("wall-time", "Where the wall time goes"),
            ("efficiency", "How close to the hardware"), ("decode-steps", "Decode steps"), ("kernels", "Kernels"),
            ("pages", "Pages and repeats"), ("setup", "Setup"), ("warnings", "Warnings"))


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _table(header: list[str] | None, rows: list[list], left: int = 1, classes: list[list[str]] | None = None) -> str:
    """An HTML table in its own scrolling box; cells are escaped here, the first `left` columns align left."""
    left_cols = {i for i in range(len(header or [])) if i < left or (classes and "l" in classes[0][i].split())}
    head = "".join(f'<th class="l">{_esc(h)}</th>' if i in left_cols else f"<th>{_esc(h)}</th>"
                   for i, h in enumerate(header or []))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            cls = " ".join(filter(None, ["l" if i < left else "", classes[r][i] if classes else ""]))
            cells.append(f'<td class="{cls}">{_esc(cell)}</td>' if cls else f"<td>{_esc(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f"<div class='scroll'><table>{thead}<tbody>{''.join(body)}</tbody></table></div>"


def _stage_table(data: dict, build) -> str:
    """A stage table with the hierarchy as indentation: a child's name cell carries its tree mark."""
    rows = data["stages"]
    marks = {"├ ": "tree-mid", "└ ": "tree-end", "": ""}
    shown = [r for r in rows if build is not efficiency_table or r["flops"] is not None or r["bytes"] is not None]
    header, cells = build(rows, [stage_name(r, data.get("dsocr_stages")) for r in rows])
    tree = [marks[m] for m, r in zip(tree_marks(rows), rows) if r in shown]
    last = "l" if header[-1] == "bound" else ""      # words, not numbers
    return _table(header, cells, classes=[[t] + [""] * (len(header) - 2) + [last] for t in tree])


def _definitions(pairs: list[tuple[str, str]]) -> str:
    return "<dl class='defs'>" + "".join(f"<dt>{_esc(t)}</dt><dd>{_esc(d)}</dd>" for t, d in pairs) + "</dl>"


def _figure(svg: str | None, caption: str = "") -> str:
    if not svg:
        return ""
    return f"<div class='figure'>{svg}" + (f"<p class='muted'>{_esc(caption)}</p>" if caption else "") + "</div>"


# ------------------------------------------------------------------------------------------- figures

def _ms_label(ns) -> str:
    """Milliseconds for a figure's words: three significant digits or more (3,912.2, 43.8, 0.290)."""
    value = ns / 1e6
    return f"{value:,.{1 if value >= 10 else 2 if value >= 1 else 3}f}"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9.5, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.fonttype": "none", "figure.dpi": 100, "savefig.dpi": 150})
    return plt


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE


def _panels(data: dict) -> list[tuple[str, list[dict]]]:
    """The stages in panels of one scale each: the top level, then the children of each parent."""
    rows = [r for r in data["stages"] if r["wall_ns"]]
    top = [r for r in rows if not r.get("parent")]
    panels = [("pipeline stages" if data.get("dsocr_stages") else "ranges", top)] if top else []
    for parent in dict.fromkeys(r["parent"] for r in rows if r.get("parent")):
        panels.append((f"inside {parent}", [r for r in rows if r.get("parent") == parent]))
    return panels


def plot_wall_time(data: dict) -> str | None:
    """Stacked horizontal bars per stage, in ms: busy, then each idle cause; one x scale per panel."""
    panels = _panels(data)
    if not panels:
        return None
    plt = _pyplot()
    sizes = [len(rows) for _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.6, 0.36 * sum(sizes) + 0.75 * len(panels) + 0.6),
                             gridspec_kw={"height_ratios": sizes}, squeeze=False)
    parts = [("busy", "busy (own kernels)")] + [(k, f"idle: {title}") for k, title in CAUSES]
    for ax, (title, rows) in zip(axes[:, 0], panels):
        names = [stage_name(r, data.get("dsocr_stages")) for r in rows][::-1]
        left = [0.0] * len(rows)
        for key, label in parts:
            values = [(r["busy_ns"] if key == "busy" else r["idle_causes_ns"][key]) / 1e6 for r in rows][::-1]
            ax.barh(names, values, left=left, color=COLORS[key], label=label, height=0.62)
            left = [a + b for a, b in zip(left, values)]
        for y, r in enumerate(rows[::-1]):
            ax.text(max(r["wall_ns"], r["busy_ns"]) / 1e6, y, f"  {_ms_label(r['wall_ns'])} ms, "
                    f"idle {_fmt_pct(r['idle_frac'], 0)}", va="center", fontsize=8)
        ax.set_xlim(0, max(max(r["wall_ns"], r["busy_ns"]) for r in rows) / 1e6 * 1.32)
        ax.set_title(title, loc="left", fontsize=9)
        ax.set_xlabel("wall time (ms)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, frameon=False, fontsize=8, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout()
    return _svg(fig)


def plot_steps(data: dict) -> str | None:
    """Wall and busy time per decode step (ms), the level shift and the timeline's step marked."""
    steps = data["steps"]
    if not steps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.6, 3.1))
    requests = list(dict.fromkeys(s["request"] for s in steps))
    for i, request in enumerate(requests):
        mine = [s for s in steps if s["request"] == request]
        x = [s["step"] for s in mine]
        ax.plot(x, [s["wall_ns"] / 1e6 for s in mine], color=COLORS["wall"], lw=1.1, alpha=0.85,
                label="wall" if i == 0 else None)
        ax.plot(x, [s["busy_ns"] / 1e6 for s in mine], color=COLORS["busy"], lw=1.1,
                label="GPU busy" if i == 0 else None)
    shift = data["step_summary"].get("level_shift")
    if shift:
        first, last = min(s["step"] for s in steps), max(s["step"] for s in steps)
        at = shift["at_step"]
        ax.axvline(at - 0.5, color=COLORS["shift"], ls="--", lw=1)
        ax.hlines([shift["before_mean_ns"] / 1e6, shift["after_mean_ns"] / 1e6], [first, at - 0.5], [at - 0.5, last],
                  color=COLORS["shift"], lw=2, label=f"level shift at step {at}: {_ms_label(shift['before_mean_ns'])} "
                  f"→ {_ms_label(shift['after_mean_ns'])} ms")
    tl = data.get("step_timeline")
    if tl:
        ax.plot([tl["step"]], [tl["wall_ns"] / 1e6], "o", mfc="none", mec="black", ms=7,
                label=f"step {tl['step']}: median wall (timeline below)")
    ax.set_xlabel("decode step")
    ax.set_ylabel("time per step (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2)
    return _svg(fig)


TIMELINE_LANES = (("kernels", "GPU kernels", COLORS["busy"]), ("copies", "GPU copies", COLORS["memcpy"]),
                  ("launch", "launch calls", COLORS["launch"]), ("sync", "sync calls", COLORS["sync"]),
                  ("memcpy", "memcpy calls", COLORS["memcpy"]), ("other", "other CUDA calls", COLORS["other_api"]))
TIMELINE_CAPTION = ("Top lanes: the step's kernels and copies on the GPU; below, the CUDA calls of its host thread by "
                    "kind. A lane with many intervals is shaded by the share of each pixel's time they fill (pale: "
                    "seldom; full colour: always); a lane with few is drawn as bars, a bar shorter than a pixel drawn a "
                    "pixel wide. Grey: nothing of that lane running. The dotted line is the end of the step.")
ZOOM = 12       # the zoomed panel shows 1/12 of the step
PIXELS = 1000   # columns of a shaded lane; also the least width of a bar (1/1000 of the panel)
FEW = 150       # a lane with more intervals than this in view is shaded, not drawn bar by bar


def plot_step_timeline(data: dict) -> str | None:
    """One decode step: the GPU lanes (its kernels, its copies) over the host thread's CUDA calls by kind;
    the whole step and, when it is too dense to see single calls, a zoom around its first synchronising
    call. Lanes are images (rasterised), the text stays text."""
    tl = data.get("step_timeline")
    if not tl:
        return None
    plt = _pyplot()
    wall = tl["wall_ns"] / 1e6
    end = max([tl["wall_ns"]] + [e for lane in tl["lanes"].values() for _, e in lane[-1:]]) / 1e6
    windows = [(0.0, end, f"decode step {tl['step']}: {_ms_label(tl['wall_ns'])} ms wall, GPU busy "
                          f"{_fmt_pct(tl['busy_ns'] / tl['wall_ns'] if tl['wall_ns'] else None)}")]
    if max(len(lane) for lane in tl["lanes"].values()) > FEW:
        windows.append(_zoom_window(tl, wall))
    fig, axes = plt.subplots(len(windows), 1, figsize=(8.6, 2.45 * len(windows)), squeeze=False)
    for ax, (lo, hi, title) in zip(axes[:, 0], windows):
        for i, (key, _, color) in enumerate(TIMELINE_LANES):
            shown = [(s / 1e6, e / 1e6) for s, e in tl["lanes"][key] if e / 1e6 >= lo and s / 1e6 <= hi]
            _draw_lane(ax, len(TIMELINE_LANES) - 1 - i, shown, color, lo, hi)
        ax.set_yticks(range(len(TIMELINE_LANES)), [label for _, label, _ in TIMELINE_LANES][::-1])
        ax.axvline(wall, color="black", ls=":", lw=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.6, len(TIMELINE_LANES) - 0.4)
        ax.tick_params(axis="y", length=0)
        ax.set_xlabel("ms from the step's start")
        ax.set_title(title, loc="left", fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def _zoom_window(tl: dict, wall: float) -> tuple[float, float, str]:
    """1/ZOOM of the step: from just before its first sync call, else around its middle."""
    width = wall / ZOOM
    sync = tl["lanes"]["sync"]
    start = max(0.0, sync[0][0] / 1e6 - width / 3) if sync else (wall - width) / 2
    where = "around the step's first sync call" if sync else "in the middle of the step"
    return start, start + width, f"zoom: {_ms_label(width * 1e6)} ms {where}"


def _draw_lane(ax, y: float, intervals: list[tuple[float, float]], color: str, lo: float, hi: float) -> None:
    """Few intervals as bars (at least a pixel wide); many as a strip shaded by the share of time they cover."""
    from matplotlib.colors import LinearSegmentedColormap

    ax.axhspan(y - 0.4, y + 0.4, color=LANE_GREY, lw=0)
    if len(intervals) <= FEW:
        least = (hi - lo) / PIXELS
        ax.broken_barh([(s, max(e - s, least)) for s, e in intervals], (y - 0.4, 0.8), color=color, lw=0,
                       rasterized=True)
        return
    shade = LinearSegmentedColormap.from_list("lane", [LANE_GREY, color])
    ax.imshow(_coverage(intervals, lo, hi, PIXELS)[None, :], extent=(lo, hi, y - 0.4, y + 0.4), aspect="auto",
              cmap=shade, vmin=0.0, vmax=1.0, interpolation="nearest", zorder=2)


def _coverage(intervals: list[tuple[float, float]], lo: float, hi: float, columns: int):
    """Per column of [lo, hi]: the share of its time covered by the (disjoint) intervals."""
    import numpy as np

    edges = np.linspace(lo, hi, columns + 1)
    starts, ends = np.array(intervals, dtype=np.float64).T
    covered_before = np.clip(edges[:, None] - starts, 0.0, ends - starts).sum(axis=1)
    return np.diff(covered_before) / np.diff(edges)


def plot_categories(data: dict) -> str | None:
    mix = {k: v for k, v in data["category_mix"].items() if sum(v.values()) > 0}
    if not mix:
        return None
    plt = _pyplot()
    categories = sorted({c for m in mix.values() for c in m}, key=lambda c: -data["category_mix"]["(all)"].get(c, 0))
    names = list(mix)[::-1]
    fig, ax = plt.subplots(figsize=(5.6, 0.4 * len(names) + 1.3))
    left = [0.0] * len(names)
    labels = [shown_name(n, data.get("dsocr_stages")) for n in names]
    for c in categories:
        shares = [100 * mix[s].get(c, 0) / sum(mix[s].values()) for s in names]
        ax.barh(labels, shares, left=left, color=PALETTE.get(c, None), label=c)
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
    rows = [o for o in ds["overall"] if o["mean_ns"] and o["stage"] != "decode_step"]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 0.42 * len(rows) + 1.0))
    names = [o["stage"] for o in rows][::-1]
    means = [o["mean_ns"] / 1e6 for o in rows][::-1]
    lo = [(o["mean_ns"] - o["min_ns"]) / 1e6 for o in rows][::-1]
    hi = [(o["max_ns"] - o["mean_ns"]) / 1e6 for o in rows][::-1]
    ax.barh(names, means, xerr=[lo, hi], color="#2ca02c", alpha=0.8, capsize=3)
    ax.set_xlabel("GPU time per request (ms): mean, whiskers min..max")
    ax.set_title(f"Spread over {ds['requests']} requests")
    return _svg(fig)


def plot_roofline(data: dict) -> str | None:
    """The roofline of analyze.out.roofline (one point per stage), embedded as SVG, when the stages have FLOPs."""
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


def _figures(data: dict) -> dict[str, str | None]:
    """Every figure, or none when matplotlib is not installed (the page keeps its tables)."""
    drawers = {"wall": plot_wall_time, "steps": plot_steps, "timeline": plot_step_timeline, "roofline": plot_roofline,
               "categories": plot_categories, "pages": plot_pages}
    try:
        return {name: draw(data) for name, draw in drawers.items()}
    except ImportError:
        return {}


# -------------------------------------------------------------------------------------------- page

def render_html(data: dict, trace=None) -> str:
    """The page; `trace` is not read (kept for callers that pass it)."""
    name = Path(data["trace_info"]["path"]).name
    figures = _figures(data)
    terms = definitions(data)
    title = "DeepSeek-OCR trace report" if data.get("dsocr_stages") else "Trace report"
    parts = [f"<h1>{title}</h1><div class='sub'><code>{_esc(data['trace_info']['path'])}</code> · {_esc(headline(data))}"
             f" · generated {_esc(data['generated_utc'])}</div>", _nav(data), _cards(data)]
    if not figures:
        parts.append("<p class='muted'>Figures need matplotlib (<code>pip install matplotlib</code>).</p>")
    parts += [_opportunities(data, terms), _stages(data, terms), _wall(data, terms, figures),
              _efficiency(data, terms, figures), _steps(data, terms, figures), _kernels(data, figures),
              _pages(data, figures), _setup(data), _warnings(data)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Report: {_esc(name)}</title><style>{CSS}</style></head><body>\n" + "\n".join(p for p in parts if p)
            + "\n</body></html>\n")


def _nav(data: dict) -> str:
    present = {"opportunities": bool(data["opportunities"]), "pages": bool(data.get("dataset"))}
    links = [f"<a href='#{key}'>{_esc(text)}</a>" for key, text in SECTIONS if present.get(key, True)]
    return "<nav>" + "".join(links) + "</nav>"


def _cards(data: dict) -> str:
    t, summary = data["totals"], data["step_summary"]
    cards = [(f"GPU busy, first → last op ({_fmt_ms(t['gpu_span_ns'], 0)} ms)", _fmt_pct(t["gpu_busy_frac"])),
             ("GPU kernel time", f"{_fmt_ms(t['kernel_ns'], 1)} ms")]
    if summary.get("steps"):
        cards.insert(0, ("decode steps, measured under tracing", f"{_fmt_rate(summary['tokens_per_s_under_tracing'])} tokens/s"))
        cards.append(("decode step, median wall", f"{_fmt_ms(summary['median_wall_ns'], 1)} ms"))
    return "<div class='cards'>" + "".join(f"<div class='card'><div class='k'>{_esc(k)}</div><div class='v'>{_esc(v)}"
                                           "</div></div>" for k, v in cards) + "</div>"


def _opportunities(data: dict, terms: dict) -> str:
    if not data["opportunities"]:
        if data.get("opportunity"):
            return f"<h2 id='opportunities'>Biggest opportunity</h2><p>{_esc(data['opportunity']['text'])}</p>"
        return ""
    items = []
    for o in data["opportunities"]:
        p = opportunity_parts(o)
        items.append(f"<li><div class='opp-title'>{o['rank']}. {_esc(p['title'])}</div><div class='opp-facts'>"
                     f"<span>recover <b>{_esc(p['recover'])}</b></span><span>throughput, measured under tracing: "
                     f"<b>{_esc(p['throughput'])}</b></span></div><div class='muted'>evidence: {_esc(p['evidence'])}"
                     f"</div><div class='muted'>query: <code>{_esc(p['query'])}</code></div></li>")
    return ("<h2 id='opportunities'>Top opportunities</h2><p>Ranked by the time each fix could recover; each fix assumed "
            "alone, then with those ranked above it.</p><ol class='opps'>" + "".join(items) + "</ol>"
            + _definitions(terms["opportunities"]))


def _stages(data: dict, terms: dict) -> str:
    t = data["totals"]
    return (f"<h2 id='stages'>Stages</h2><p>GPU kernel time in the trace: {_fmt_ms(t['kernel_ns'])} ms in "
            f"{t['kernels']:,} kernels; the GPU was busy {_fmt_pct(t['gpu_busy_frac'])} of the "
            f"{_fmt_ms(t['gpu_span_ns'])} ms from its first to its last operation.</p>"
            + _stage_table(data, stage_table) + _definitions(terms["stages"]))


def _wall(data: dict, terms: dict, figures: dict) -> str:
    return ("<h2 id='wall-time'>Where the wall time goes</h2><p>Each stage's wall time = busy + idle, the idle time "
            "split by cause.</p>" + _figure(figures.get("wall")) + _stage_table(data, wall_table)
            + _definitions(terms["wall"]))


def _efficiency(data: dict, terms: dict, figures: dict) -> str:
    out = "<h2 id='efficiency'>How close to the hardware</h2>"
    if not any(r["flops"] is not None or r["bytes"] is not None for r in data["stages"]):
        return out + ("<p class='muted'>No FLOPs or bytes: the trace carries no workload manifest, so MFU, MBU and the "
                      "roofline are not computed.</p>") + _notes(data)
    out += _stage_table(data, efficiency_table) + f"<p>{_esc(peaks_sentence(data))}</p>"
    if data.get("model_level"):
        out += f"<p>{_esc(model_sentence(data['model_level']))}</p>"
    return out + _definitions(terms["efficiency"]) + _figure(figures.get("roofline")) + _notes(data)


def _notes(data: dict) -> str:
    return "".join(f"<p class='muted'>Note: {_esc(n)}</p>" for n in data.get("notes") or [])


def _steps(data: dict, terms: dict, figures: dict) -> str:
    out = "<h2 id='decode-steps'>Decode steps</h2>"
    if not data["step_summary"].get("steps"):
        return out + "<p class='muted'>No decode_step ranges in this trace.</p>"
    out += "".join(f"<p>{_esc(line)}</p>" for line in step_sentences(data["step_summary"]))
    out += _figure(figures.get("steps"))
    tl = data.get("step_timeline")
    if tl:
        header, rows = timeline_table(tl)
        out += (f"<h3 id='step-timeline'>The median step</h3><p>{_esc(timeline_sentence(tl))}</p>"
                + _figure(figures.get("timeline"), TIMELINE_CAPTION) + _table(header, rows))
    header, rows = step_rows(data["steps"])
    out += "<h3>Steps</h3>" + _table(header, rows, left=0)
    if (data.get("decode") or {}).get("fit"):
        out += f"<p>{_esc(fit_sentence(data['decode']))}</p>"
    return out + _definitions(terms["steps"])


def _kernels(data: dict, figures: dict) -> str:
    dsocr = data.get("dsocr_stages")
    out = ("<h2 id='kernels'>Kernels</h2><h3>Kernel time by part</h3><p>Disjoint parts that sum to the trace's kernel "
           "time.</p>" + _table(["part", "ms", "share"], [[p["part"], _fmt_ms(p["ns"]), _fmt_pct(p["share"])]
                                                           for p in data["breakdown"]]))
    for stage, kernels in data["top_kernels"].items():
        if kernels:
            out += f"<h3>Top kernels: {_esc(shown_name(stage, dsocr))}</h3>" + _table(
                ["kernel", "category", "count", "total ms", "share of stage"],
                [[_short(k["label"], 90), k["category"], f"{k['instances']:,}", _fmt_ms(k["total_ns"]), _fmt_pct(k["share"])]
                 for k in kernels], left=2, classes=[["wrap", "", "", "", ""] for _ in kernels])
    header, rows = category_rows(data["category_mix"], dsocr)
    return (out + "<h3>Kernel category mix</h3><p>Share of each stage's GPU-op time per kernel category.</p>"
            + _table(header, rows) + _figure(figures.get("categories")))


def _pages(data: dict, figures: dict) -> str:
    d = data.get("dataset")
    if not d:
        return ""
    header, rows = dataset_rows(d)
    return (f"<h2 id='pages'>Pages and repeats</h2><p>{_esc(dataset_sentence(d))}</p><p class='muted'>Stage GPU time per "
            "request (inclusive kernel time; cv = std/mean; repeat cv = pooled within-page std / mean, the run-to-run "
            "noise).</p>" + _table(header, rows) + _figure(figures.get("pages")))


def _setup(data: dict) -> str:
    rows = setup_rows(data)
    return "<h2 id='setup'>Setup</h2>" + _table(None, rows, left=2, classes=[["", "wrap"] for _ in rows])


def _warnings(data: dict) -> str:
    warnings = data["warnings"]
    body = ("<ul class='warn'>" + "".join(f"<li>{_esc(w)}</li>" for w in warnings) + "</ul>" if warnings
            else "<p class='muted'>none</p>")
    return (f"<h2 id='warnings'>Warnings</h2>{body}<p class='muted'>Every number is in metrics.json beside this file; "
            "definitions and assumptions in assumptions.md.</p>")
