"""What changed between two traces: per-stage GPU time, kernel count, FLOPs and MFU, and the kernels
whose time changed most.

Stages are matched by their bare name (`dsocr:sam` and `sam` are the same stage). GPU time is the
inclusive kernel time of a stage (every kernel launched inside its ranges). When both traces hold
`request` ranges (a dataset capture), times are per request (the mean over requests), so runs with
different numbers of pages compare; otherwise they are trace totals.

Significance: a stage's time change is significant only when it exceeds the run-to-run noise,
|delta| > 2 x pooled repeat std, the repeat std of each trace being the pooled within-page std of
`analyze.dataset` (needs >= 2 repeats of a page in both traces). Without repeats the verdict is
"unknown". Kernel deltas are trace totals per kernel name.

MFU is in percent (as analyze.metrics gives it); delta_mfu is in percentage points.

Two traces of different models (manifest `model.preset` or `model.config` differ, or only one of
them is a DeepSeek-OCR capture with a manifest) are refused unless --force.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dsocr_perf.analyze.errors import UsageError
from dsocr_perf.dsocr import stages

if TYPE_CHECKING:
    import polars as pl

SIGMAS = 2.0
TOP_KERNELS = 10
# wall-time accounting compared per stage (analyze.accounting)
WALL_COLUMNS = ("wall_ns", "busy_ns", "idle_ns", "kernel_launches", "host_syncs", "memcpy_calls")


def bare(name: str) -> str:
    prefix = stages.DOMAIN + ":"
    return name[len(prefix):] if name.startswith(prefix) else name


@dataclass
class Side:
    """What one trace contributes to a diff."""
    label: str
    trace: object
    manifest: dict | None
    stages: pl.DataFrame     # key, name, instances, gpu_ns, kernels, flops, mfu, repeat_std_ns, repeat_n
    kernels: pl.DataFrame    # name, instances, total_ns
    per_request: bool
    requests: int
    max_repeats: int
    doc: dict | None = None          # the analysis document (steps, opportunities)


def _model_of(manifest: dict | None):
    model = (manifest or {}).get("model") or {}
    return model.get("preset"), model.get("config")


def check_same_model(a: Side, b: Side) -> str | None:
    """None when the traces may be compared, else a one-line reason."""
    if (a.manifest is None) != (b.manifest is None):
        with_m, without = (a, b) if a.manifest else (b, a)
        preset = _model_of(with_m.manifest)[0]
        return (f"{with_m.label} is a DeepSeek-OCR capture (preset {preset}) but {without.label} has no dsocr manifest: "
                "different workloads; pass --force to diff them anyway")
    if a.manifest is None:
        return None
    preset_a, config_a = _model_of(a.manifest)
    preset_b, config_b = _model_of(b.manifest)
    if preset_a != preset_b or (config_a and config_b and config_a != config_b):
        what = f"preset {preset_a} vs {preset_b}" if preset_a != preset_b else f"preset {preset_a}, different configs"
        return (f"{a.label} and {b.label} ran different models ({what}): a diff would compare unlike work; "
                "pass --force to diff them anyway")
    return None


def _stage_metrics(trace, table: pl.DataFrame, manifest: dict | None) -> dict[str, dict]:
    """name -> {flops, mfu (percent)} from dsocr_perf.analyze.metrics; empty without a manifest."""
    if manifest is None:
        return {}
    from dsocr_perf.analyze.metrics.flops import stage_metrics

    rows, _ = stage_metrics(table, manifest, trace.gpu.name)
    return {r["name"]: {"flops": r.get("flops"), "mfu": r.get("mfu")} for r in rows}


def side_of(trace, label: str) -> Side:
    import polars as pl

    from dsocr_perf.analyze.out.dataset import dataset_stats
    from dsocr_perf.analyze.out.document import document

    manifest = trace.manifest
    table = trace.polars("stages")
    metrics = _stage_metrics(trace, table, manifest)
    stats = dataset_stats(trace, manifest)
    doc = document(trace, "all")
    rows = []
    for row in table.iter_rows(named=True):
        key = bare(row["name"])
        extra = metrics.get(row["name"], {})
        rows.append({"key": key, "name": row["name"], "instances": row["instances"], "gpu_ns": float(row["inclusive_ns"]),
                     "kernels": float(row["kernels"]), "flops": extra.get("flops"), "mfu": extra.get("mfu"),
                     **{c: float(row[c]) for c in WALL_COLUMNS}})
    frame = pl.DataFrame(rows, schema={"key": pl.Utf8, "name": pl.Utf8, "instances": pl.Int64, "gpu_ns": pl.Float64,
                                       "kernels": pl.Float64, "flops": pl.Float64, "mfu": pl.Float64,
                                       **{c: pl.Float64 for c in WALL_COLUMNS}})
    per_request = stats is not None and stats.requests.height > 0
    if per_request:
        n = stats.requests.height
        noise = stats.overall.select(pl.col("stage").alias("key"), "repeat_std_ns")
        # degrees of freedom of the pooled repeat std: sum over pages of (repeats - 1)
        dof = stats.per_page.filter(pl.col("n") >= 2).group_by("stage").agg((pl.col("n") - 1).sum().alias("repeat_dof"))
        frame = (frame.with_columns(pl.col("gpu_ns", "kernels", "flops", *WALL_COLUMNS) / n)
                 .join(noise, on="key", how="left")
                 .join(dof.rename({"stage": "key"}), on="key", how="left"))
    else:
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias("repeat_std_ns"), pl.lit(None, pl.UInt32).alias("repeat_dof"))
    kernels = pl.from_arrow(trace.con.sql("""
        SELECT name, count(*)::BIGINT AS instances, sum(dur_ns)::BIGINT AS total_ns
        FROM kernels GROUP BY name""").to_arrow_table())
    return Side(label=label, trace=trace, manifest=manifest, stages=frame, kernels=kernels,
                per_request=per_request, requests=stats.requests.height if stats else 0,
                max_repeats=stats.max_repeats if stats else 0, doc=doc)


def _delta(a, b):
    if a is None or b is None:
        return None, None
    d = b - a
    return d, (100.0 * d / a if a else None)


def _shown_stages(sa: dict, sb: dict, limit: int = 20) -> list[str]:
    """The DeepSeek-OCR stages in pipeline order when present, else the `limit` busiest range names."""
    from dsocr_perf.analyze.out.dataset import STAGE_ORDER
    keys = set(sa) | set(sb)
    known = [k for k in STAGE_ORDER if k in keys]
    if known:
        return known
    busiest = lambda k: -max((sa.get(k) or {}).get("gpu_ns") or 0, (sb.get(k) or {}).get("gpu_ns") or 0)
    return sorted(keys, key=lambda k: (busiest(k), k))[:limit]


def compare(a: Side, b: Side, top: int = TOP_KERNELS) -> dict:
    """The diff as a JSON-ready dict (times in ns, per request when both traces have requests)."""
    import polars as pl

    per_request = a.per_request and b.per_request
    if a.per_request != b.per_request:
        # only one is a dataset capture: compare totals on both sides
        a, b = (_totals(a), _totals(b))
    repeats_known = per_request and (a.max_repeats >= 2 and b.max_repeats >= 2)
    sa = {r["key"]: r for r in a.stages.iter_rows(named=True)}
    sb = {r["key"]: r for r in b.stages.iter_rows(named=True)}
    rows = []
    for key in _shown_stages(sa, sb):
        ra, rb = sa.get(key), sb.get(key)
        get = lambda r, c: None if r is None else r.get(c)
        d_ns, d_pct = _delta(get(ra, "gpu_ns"), get(rb, "gpu_ns"))
        dk, dk_pct = _delta(get(ra, "kernels"), get(rb, "kernels"))
        df, df_pct = _delta(get(ra, "flops"), get(rb, "flops"))
        dm, _ = _delta(get(ra, "mfu"), get(rb, "mfu"))
        noise = None
        significant = None
        if repeats_known and ra and rb and ra.get("repeat_std_ns") is not None and rb.get("repeat_std_ns") is not None:
            na, nb = ra.get("repeat_dof") or 0, rb.get("repeat_dof") or 0
            if na + nb > 0:
                noise = math.sqrt((ra["repeat_std_ns"] ** 2 * na + rb["repeat_std_ns"] ** 2 * nb) / (na + nb))
                significant = d_ns is not None and abs(d_ns) > SIGMAS * noise
        rows.append({"stage": key, "a_ns": get(ra, "gpu_ns"), "b_ns": get(rb, "gpu_ns"), "delta_ns": d_ns, "delta_pct": d_pct,
                     "a_kernels": get(ra, "kernels"), "b_kernels": get(rb, "kernels"), "delta_kernels": dk,
                     "delta_kernels_pct": dk_pct, "a_flops": get(ra, "flops"), "b_flops": get(rb, "flops"),
                     "delta_flops": df, "delta_flops_pct": df_pct, "a_mfu": get(ra, "mfu"), "b_mfu": get(rb, "mfu"),
                     "delta_mfu": dm, "noise_std_ns": noise, "significant": significant,
                     **{f"{side}_{c}": get(r, c) for c in WALL_COLUMNS for side, r in (("a", ra), ("b", rb))}})
    kernels = (a.kernels.rename({"instances": "a_instances", "total_ns": "a_ns"})
               .join(b.kernels.rename({"instances": "b_instances", "total_ns": "b_ns"}), on="name", how="full", coalesce=True)
               .with_columns(pl.col("a_instances", "a_ns", "b_instances", "b_ns").fill_null(0))
               .with_columns((pl.col("b_ns") - pl.col("a_ns")).alias("delta_ns"))
               .with_columns(pl.when(pl.col("a_ns") > 0).then(100.0 * pl.col("delta_ns") / pl.col("a_ns"))
                             .otherwise(None).alias("delta_pct"))
               .sort([pl.col("delta_ns").abs(), pl.col("name")], descending=[True, False])
               .head(top))
    if repeats_known:
        significance = f"|delta| > {SIGMAS:g} x pooled repeat std"
    elif per_request:
        significance = "fewer than 2 repeats of a page: significance unknown"
    else:
        significance = "no repeats: significance unknown"
    return {
        "a": {"trace": str(a.trace.path), "requests": a.requests, "max_repeats": a.max_repeats},
        "b": {"trace": str(b.trace.path), "requests": b.requests, "max_repeats": b.max_repeats},
        "unit": "per request (mean over requests)" if per_request else "trace total",
        "significance": significance,
        "stages": rows,
        "throughput": throughput(a, b),
        "predicted": predicted_savings(a, b, {r["stage"]: r for r in rows}),
        "kernels": kernels.to_dicts(),
    }


def throughput(a: Side, b: Side) -> dict:
    """Decode tokens/s of both (measured under tracing) and the step wall time medians."""
    def of(side):
        s = (side.doc or {}).get("step_summary") or {}
        return s.get("tokens_per_s_under_tracing"), s.get("median_wall_ns"), s.get("median_busy_ns")

    (ta, wa, ba), (tb, wb, bb) = of(a), of(b)
    return {"a_tokens_per_s": ta, "b_tokens_per_s": tb, "speedup": tb / ta if ta and tb else None,
            "a_median_step_wall_ns": wa, "b_median_step_wall_ns": wb,
            "a_median_step_busy_ns": ba, "b_median_step_busy_ns": bb}


def predicted_savings(a: Side, b: Side, rows: dict) -> list[dict]:
    """A's opportunities (what the wall-time accounting said a fix could recover) beside what B achieved
    in the same stage's wall time."""
    out = []
    for o in (a.doc or {}).get("opportunities") or []:
        row = rows.get(o["stage"]) or {}
        achieved = (row.get("a_wall_ns") - row.get("b_wall_ns")) if row.get("a_wall_ns") is not None and \
            row.get("b_wall_ns") is not None else None
        out.append({"rank": o["rank"], "kind": o["kind"], "stage": o["stage"], "title": o["title"],
                    "predicted_ns": o["recoverable_ns"], "achieved_ns": achieved})
    return out


def _totals(side: Side) -> Side:
    """The side with per-request means turned back into trace totals."""
    import polars as pl

    if not side.per_request:
        return side
    n = side.requests
    frame = side.stages.with_columns(pl.col("gpu_ns", "kernels", "flops", *WALL_COLUMNS) * n,
                                     pl.lit(None, pl.Float64).alias("repeat_std_ns"))
    return Side(side.label, side.trace, side.manifest, frame, side.kernels, False, side.requests, side.max_repeats,
                side.doc)


def _num(x, scale=1.0, fmt="{:,.3f}") -> str:
    return "-" if x is None else fmt.format(x / scale)


def _signed(x, scale=1.0, fmt="{:+,.3f}") -> str:
    return "-" if x is None else fmt.format(x / scale)


def _unit(values) -> tuple[str, float]:
    """ms for stage times of a millisecond or more, else µs, so that small deltas stay visible."""
    biggest = max((abs(v) for v in values if v is not None), default=0)
    return ("ms", 1e6) if biggest >= 1e6 else ("us", 1e3)


def format_diff(result: dict) -> str:
    from dsocr_perf.analyze.out.table import _plural, middle, render

    lines = [f"A: {result['a']['trace']} ({_plural(result['a']['requests'], 'request range')})",
             f"B: {result['b']['trace']} ({_plural(result['b']['requests'], 'request range')})",
             f"times {result['unit']}; GPU = inclusive kernel time; significant: {result['significance']}", ""]
    unit, scale = _unit([r[k] for r in result["stages"] for k in ("a_ns", "b_ns")])
    cells = []
    for r in result["stages"]:
        mfu = (f"{_num(r['a_mfu'], fmt='{:.1f}')} → {_num(r['b_mfu'], fmt='{:.1f}')}"
               if r["a_mfu"] is not None or r["b_mfu"] is not None else "-")
        cells.append([r["stage"], _num(r["a_ns"], scale), _num(r["b_ns"], scale), _signed(r["delta_ns"], scale),
                      _signed(r["delta_pct"], fmt="{:+.1f}%"), _arrow(r["a_kernels"], r["b_kernels"]),
                      _signed(r["delta_flops"], 1e9, "{:+,.1f}"), mfu, {True: "yes", False: "no", None: "?"}[r["significant"]]])
    lines.append(render(["stage", f"GPU A {unit}", f"GPU B {unit}", f"delta {unit}", "delta", "kernels A → B",
                         "GFLOP delta", "MFU % A → B", "signif."], cells, "l" + "r" * 8))
    lines += ["", "where the wall time goes (wall = the stages' own duration; idle = wall - busy)"]
    cells = [[r["stage"], _arrow(r["a_wall_ns"], r["b_wall_ns"], 1e6, "{:,.1f}"), _ratio(r["a_wall_ns"], r["b_wall_ns"]),
              _arrow(r["a_busy_ns"], r["b_busy_ns"], 1e6, "{:,.1f}"),
              _arrow(_share(r["a_idle_ns"], r["a_wall_ns"]), _share(r["b_idle_ns"], r["b_wall_ns"]), 1, "{:.0f}%"),
              _arrow(r["a_kernel_launches"], r["b_kernel_launches"]), _arrow(r["a_host_syncs"], r["b_host_syncs"]),
              _arrow(r["a_memcpy_calls"], r["b_memcpy_calls"])] for r in result["stages"] if r["a_wall_ns"] or r["b_wall_ns"]]
    lines.append(render(["stage", "wall ms A → B", "faster", "busy ms A → B", "idle A → B", "launches A → B",
                         "syncs A → B", "copies A → B"], cells, "l" + "r" * 7))
    t = result.get("throughput") or {}
    if t.get("a_tokens_per_s") or t.get("b_tokens_per_s"):
        lines += ["", f"decode: {_arrow(t['a_tokens_per_s'], t['b_tokens_per_s'], 1, '{:,.1f}')} tokens/s "
                      f"({_ratio(t['b_tokens_per_s'], t['a_tokens_per_s'])} faster, measured under tracing); median step wall "
                      f"{_arrow(t['a_median_step_wall_ns'], t['b_median_step_wall_ns'], 1e6, '{:,.2f}')} ms, busy "
                      f"{_arrow(t['a_median_step_busy_ns'], t['b_median_step_busy_ns'], 1e6, '{:,.2f}')} ms"]
    if result.get("predicted"):
        lines += ["", "A's opportunities (predicted by its wall-time accounting) beside what B achieved in that stage"]
        cells = [[p["rank"], middle(p["title"], 70), _num(p["predicted_ns"], 1e6, "{:,.1f}"),
                  _num(p["achieved_ns"], 1e6, "{:,.1f}")] for p in result["predicted"]]
        lines.append(render(["#", "opportunity", "predicted ms", "achieved ms"], cells, "rlrr", max_width=70))
    unit, scale = _unit([k[c] for k in result["kernels"] for c in ("a_ns", "b_ns")])
    lines += ["", "kernels whose total time changed most (trace totals)"]
    cells = [[_num(k["a_ns"], scale), _num(k["b_ns"], scale), _signed(k["delta_ns"], scale),
              _signed(k["delta_pct"], fmt="{:+.1f}%"), _arrow(k["a_instances"], k["b_instances"]), middle(k["name"], 90)]
             for k in result["kernels"]]
    lines.append(render([f"A {unit}", f"B {unit}", f"delta {unit}", "delta", "count A → B", "kernel"], cells, "rrrrrl",
                        max_width=90))
    return "\n".join(lines)


def _arrow(a, b, scale: float = 1.0, fmt: str = "{:,.0f}") -> str:
    return f"{_num(a, scale, fmt)} → {_num(b, scale, fmt)}"


def _ratio(a, b) -> str:
    """How many times faster B is than A (A / B), for times."""
    return "-" if not a or not b else f"{a / b:,.1f}x"


def _share(part, whole):
    return None if part is None or not whole else 100.0 * part / whole


def register(cli, common) -> None:
    @cli.command("diff", short_help="What changed between two traces, per stage.")
    @click.argument("trace_a", metavar="A", type=click.Path(path_type=Path))
    @click.argument("trace_b", metavar="B", type=click.Path(path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option("--top", default=TOP_KERNELS, show_default=True, type=click.IntRange(min=1),
                  help="How many changed kernels to list.")
    @click.option("--force", is_flag=True, help="Diff even when the traces ran different models.")
    @common.no_cache_option
    def diff_command(trace_a: Path, trace_b: Path, as_json: bool, top: int, force: bool, no_cache: bool) -> None:
        """What changed from trace A to trace B: per-stage time, kernels, FLOPs, MFU; kernels that moved most."""
        a = side_of(common.open(trace_a, no_cache, quiet=as_json), f"A ({trace_a.name})")
        b = side_of(common.open(trace_b, no_cache, quiet=as_json), f"B ({trace_b.name})")
        reason = check_same_model(a, b)
        if reason and not force:
            raise UsageError(reason)
        result = compare(a, b, top=top)
        if reason:
            result["warning"] = reason
        if as_json:
            from dsocr_perf.analyze.out.document import clean

            common.echo_json(clean(result))
        else:
            if reason:
                click.echo(f"warning: {reason}", err=True)
            common.echo(format_diff(result))
