"""`dsocr-analyze`: where the GPU time of a trace went, per NVTX range, and SQL over the same views.

    dsocr-analyze TRACE                      stage table (prefill, decode, sam, clip, projector)
    dsocr-analyze TRACE --ranges all         every range name
    dsocr-analyze TRACE --json               machine-readable
    dsocr-analyze kernels TRACE [--range NAME] [--top N]
    dsocr-analyze sql TRACE "SELECT ..."     or  -f sql/FILE.sql,  --csv / --json

`dsocr-analyze TRACE` is `dsocr-analyze stages TRACE`. Commands import only what they need: the
stage table and `sql` run on duckdb alone (no polars). Commands of other modules are registered in
PLUGIN_COMMANDS and imported only when called.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import click

from dsocr_perf.analyze.errors import TraceError
from dsocr_perf.analyze.load import STAGE_COLUMNS

DEFAULT_COMMAND = "stages"

# name -> "module:attribute" of a click command, loaded on first use (modules owned by others).
PLUGIN_COMMANDS = {
    "dataset": "dsocr_perf.analyze.dataset:dataset_command",
    "diff": "dsocr_perf.analyze.diff:diff_command",
    "export-perfetto": "dsocr_perf.analyze.perfetto:export_perfetto_command",
    "writeback": "dsocr_perf.analyze.writeback:writeback_command",
    "report": "dsocr_perf.analyze.report:report_command",
}


class AnalyzeGroup(click.Group):
    """A group whose first argument may be a trace instead of a command (then: the stage table),
    and whose plugin commands are imported lazily."""

    def list_commands(self, ctx):
        plugins = [n for n, target in PLUGIN_COMMANDS.items() if _module_exists(target.split(":")[0])]
        return sorted(set(super().list_commands(ctx)) | set(plugins))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None or name not in PLUGIN_COMMANDS:
            return command
        module_name, attribute = PLUGIN_COMMANDS[name].split(":")
        if not _module_exists(module_name):
            return None
        return getattr(importlib.import_module(module_name), attribute)

    def parse_args(self, ctx, args):
        if args and args[0] not in ("--help", "-h", "--version") and args[0] not in self.list_commands(ctx):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@click.group(cls=AnalyzeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Per-stage GPU time of an Nsight Systems export (or PyTorch profiler trace), attributed to
    NVTX ranges the way `nsys stats` does, and SQL over the trace.

    \b
    dsocr-analyze TRACE                 the stage table (same as: dsocr-analyze stages TRACE)
    dsocr-analyze TRACE --ranges all    every range name;  --json for machine-readable output
    dsocr-analyze kernels TRACE [--range NAME] [--top N]
    dsocr-analyze sql TRACE "SELECT ..." | -f sql/FILE.sql  [--csv | --json]
    """


no_cache_option = click.option("--no-cache", is_flag=True,
                               help="Do not read or write the analysis cache (<trace>.dsocr-cache.duckdb).")


def _open(path: Path, no_cache: bool):
    from dsocr_perf.analyze.load import open_trace

    trace = open_trace(path, cache=not no_cache)
    for warning in trace.warnings:
        click.echo(f"Warning: {warning}", err=True)
    return trace


# ---------------------------------------------------------------------------------------------------
# stages: the main table



def stage_rows(trace, which: str = "stages") -> list[dict]:
    """Per range name rows of the `stages` view: the reported stages when present (matched by bare
    name in any domain), else the top-level ranges; `which='all'` gives every range name."""
    from dsocr_perf.dsocr.stages import REPORTED_STAGES

    rows = [dict(row) for row in trace.stage_facts().stages]
    if which == "all":
        return rows
    by_stage = {}
    for row in rows:
        bare = row["name"].split(":", 1)[-1]
        if bare in REPORTED_STAGES:
            by_stage.setdefault(bare, []).append(row)
    if by_stage:
        return [r for stage in REPORTED_STAGES for r in by_stage.get(stage, [])]
    return [r for r in rows if r["depth"] == 0]


def extra_stage_columns(trace, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Hook for more per-stage columns (FLOP/s, MFU, MBU from dsocr_perf.analyze.metrics): headers and one list
    of cell strings per row. The lead joins analyze.metrics here; empty until then."""
    return [], [[] for _ in rows]


def _trace_summary(trace) -> str:
    facts = trace.stage_facts()
    total, kernels, attributed = facts.kernel_ns, facts.kernels, facts.attributed_ns
    version = trace.meta.get("EXPORT_PRODUCT_VERSION")
    gpus = sorted({name for _, name, _, _ in facts.gpus if name is not None})
    source = trace.source + (f" {version}" if version else "")
    gpu = f", {', '.join(gpus)}" if gpus else ""
    from dsocr_perf.analyze.table import ms, pct

    return (f"{trace.path} ({source}{gpu})\n"
            f"GPU kernel time {ms(total)} ms in {kernels:,} kernels; {pct(attributed, total) or '0%'} inside ranges")


@cli.command("stages")
@click.argument("trace_path", metavar="TRACE", type=click.Path(path_type=Path))
@click.option("--ranges", "which", type=click.Choice(["stages", "all"]), default="stages", show_default=True,
              help="stages: prefill/decode/sam/clip/projector when present, else the top-level ranges; all: every range name.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: {trace, ranges: [...], workload, gpu, model, warnings, notes}.")
@click.option("--peak-tflops", type=float, help="Override the GPU's dense bf16 peak (TFLOP/s) used for MFU.")
@click.option("--peak-gbs", type=float, help="Override the GPU's memory bandwidth (GB/s) used for MBU.")
@click.option("--attention-policy", type=click.Choice(["full", "causal-half"]), default=None,
              help="How causal attention FLOPs are counted (default full: as torch's flop counter does).")
@click.option("--roofline", "roofline_stem", type=click.Path(path_type=Path),
              help="Also write a roofline plot, one point per stage: STEM.png and STEM.svg.")
@click.option("--force", is_flag=True, help="Overwrite an existing roofline plot.")
@no_cache_option
def stages_command(trace_path: Path, which: str, as_json: bool, peak_tflops: float | None,
                   peak_gbs: float | None, attention_policy: str | None, roofline_stem: Path | None,
                   force: bool, no_cache: bool):
    """Per-stage GPU time of TRACE (the default command), with FLOPs, MFU and MBU when the trace
    carries a dsocr manifest."""
    from dsocr_perf.analyze.load import open_trace

    # Without a cache, load only what the stage table needs (no kernel names; no cache is written);
    # the kernel table shown when there are no NVTX ranges needs the names: then the trace is read
    # again in full.
    trace = open_trace(trace_path, cache=not no_cache, lean=True)
    if trace.cache_path is None and not trace.stage_facts().ranges:
        trace = open_trace(trace_path, cache=not no_cache)
    has_kernels = trace.stage_facts().ops > 0
    if not has_kernels:
        raise TraceError(f"{trace_path} has no GPU kernels, memcpys or memsets: nothing to attribute; capture with "
                         "CUDA tracing on (`nsys profile --trace=cuda,nvtx`)")
    if not as_json:
        for warning in trace.warnings:
            click.echo(f"Warning: {warning}", err=True)
    rows = stage_rows(trace, which)
    from dsocr_perf.analyze.efficiency import efficiency_table, stage_efficiency

    try:
        metric_rows, extras = stage_efficiency(trace, rows, peak_tflops=peak_tflops, peak_gbs=peak_gbs,
                                               policy=attention_policy)
    except ValueError as e:
        raise TraceError(str(e)) from None
    if roofline_stem is not None:
        from dsocr_perf.analyze.roofline import plot_roofline

        written = plot_roofline(metric_rows, extras["gpu"], roofline_stem, title=str(trace_path), force=force)
        click.echo(f"wrote {', '.join(map(str, written))}", err=True)
    if as_json:
        import json

        metric_keys = ("flops", "bytes", "tflops", "mfu", "gbs", "mbu", "intensity", "bound")
        out = {"trace": str(trace_path),
               "ranges": [{k: r[k] for k in STAGE_COLUMNS} | {k: m[k] for k in metric_keys}
                          for r, m in zip(rows, metric_rows)],
               "workload": extras["workload"], "gpu": extras["gpu"], "model": extras["model"],
               "attention_policy": extras["attention_policy"],
               "warnings": trace.warnings, "notes": extras["messages"]}
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(_trace_summary(trace))
    click.echo()
    if not rows:
        click.echo("No NVTX ranges: the kernels by total time:\n")
        click.echo(_kernel_table(trace, None, 15))
        return
    click.echo(_stage_table(trace, rows))
    if trace.manifest is not None:
        click.echo()
        click.echo(efficiency_table(metric_rows, extras))


def _stage_table(trace, rows: list[dict]) -> str:
    from dsocr_perf.analyze.table import ms, pct, render

    total = trace.stage_facts().kernel_ns
    headers = ["range", "n", "GPU ms", "GPU %", "excl ms", "excl %", "busy ms", "span ms", "CPU ms", "kernels",
               "launches"]
    cells = [[r["name"], f"{r['instances']:,}", ms(r["inclusive_ns"]), pct(r["inclusive_ns"], total),
              ms(r["exclusive_ns"]), pct(r["exclusive_ns"], total), ms(r["busy_ns"]), ms(r["span_ns"]),
              ms(r["cpu_ns"]), f"{r['kernels']:,}", f"{r['launches']:,}"] for r in rows]
    extra_headers, extra_cells = extra_stage_columns(trace, rows)
    headers += extra_headers
    cells = [c + e for c, e in zip(cells, extra_cells)]
    legend = ("GPU = kernel time launched inside the range (nested ranges included, like nsys nvtx_kern_sum); "
              "excl = only where it is the innermost range;\nbusy = union of those kernels' intervals; "
              "span = first kernel start to last kernel end; % of all kernel time in the trace.")
    return render(headers, cells, "l" + "r" * (len(headers) - 1)) + "\n\n" + legend


# ---------------------------------------------------------------------------------------------------
# kernels

def _kernel_table(trace, range_name: str | None, top: int, as_rows: bool = False):
    from dsocr_perf.analyze.table import ms, pct, render

    con = trace.con
    if range_name is None:
        source, params = "kernels", []
    else:
        names = [n for (n,) in con.execute("SELECT name FROM stages WHERE name = ? OR name LIKE ?",
                                           [range_name, "%:" + range_name]).fetchall()]
        if not names:
            raise TraceError(f"no range named {range_name!r} in {trace.path}; list them with "
                             f"`dsocr-analyze {trace.path} --ranges all`")
        marks = ", ".join("?" for _ in names)
        source = f"""(SELECT * FROM kernels WHERE op_id IN (
                         SELECT kr.op_id FROM kernel_ranges kr JOIN ranges r USING (range_id) WHERE r.name IN ({marks})))"""
        params = names
    rows = con.execute(f"""
        SELECT name, kind, category, count(*) AS instances, sum(dur_ns)::BIGINT AS total_ns,
               (avg(dur_ns))::BIGINT AS avg_ns, sum(sum(dur_ns)) OVER ()::BIGINT AS all_ns
        FROM {source} k GROUP BY name, kind, category ORDER BY total_ns DESC, name LIMIT ?""", params + [top]).fetchall()
    if as_rows:
        return rows
    cells = [[name, kind, cat, f"{n:,}", ms(tot), pct(tot, all_ns), f"{avg / 1e3:,.1f}"]
             for name, kind, cat, n, tot, avg, all_ns in rows]
    return render(["kernel", "kind", "category", "n", "total ms", "%", "avg us"], cells, "lllrrrr", max_width=80)


@cli.command("kernels")
@click.argument("trace_path", metavar="TRACE", type=click.Path(path_type=Path))
@click.option("--range", "range_name", metavar="NAME", help="Only kernels launched inside this range (e.g. prefill or dsocr:prefill).")
@click.option("--top", default=20, show_default=True, help="Number of kernel names to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows.")
@no_cache_option
def kernels_command(trace_path: Path, range_name: str | None, top: int, as_json: bool, no_cache: bool):
    """GPU operations of TRACE grouped by name, by total time."""
    trace = _open(trace_path, no_cache)
    if as_json:
        import json

        rows = _kernel_table(trace, range_name, top, as_rows=True)
        keys = ("name", "kind", "category", "instances", "total_ns", "avg_ns")
        click.echo(json.dumps([dict(zip(keys, r[:6])) for r in rows], indent=2))
        return
    click.echo(_kernel_table(trace, range_name, top))


# ---------------------------------------------------------------------------------------------------
# sql

@cli.command("sql")
@click.argument("trace_path", metavar="TRACE", type=click.Path(path_type=Path))
@click.argument("query", required=False)
@click.option("-f", "--file", "sql_file", type=click.Path(path_type=Path), help="Read the query from a file (e.g. sql/top_kernels.sql).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@no_cache_option
def sql_command(trace_path: Path, query: str | None, sql_file: Path | None, as_csv: bool, as_json: bool, no_cache: bool):
    """Run SQL over the canonical views of TRACE (kernels, launches, ranges, marks, kernel_ranges,
    stages, range_stats, gpus, meta; decode_model when the trace carries a dsocr manifest)."""
    if (query is None) == (sql_file is None):
        raise TraceError("give either a query or -f FILE.sql, e.g. dsocr-analyze sql TRACE \"SELECT count(*) FROM kernels\"")
    if sql_file is not None:
        try:
            query = sql_file.read_text()
        except OSError as e:
            raise TraceError(f"{sql_file}: cannot read the SQL file ({e.strerror})") from None
    trace = _open(trace_path, no_cache)
    import duckdb

    if "decode_model" in query.lower():
        _register_decode_model(trace)
    try:
        result = trace.con.execute(query)
        columns = [d[0] for d in result.description] if result.description else []
        rows = result.fetchall() if columns else []
    except duckdb.Error as e:
        message = " ".join(str(e).split())
        raise TraceError(f"SQL: {message}") from None
    _print_rows(columns, rows, as_csv, as_json)


def _register_decode_model(trace) -> None:
    """The `decode_model` view: analytic FLOPs and bytes per decode step and decoder layer of the
    recorded workload (first request), so decode cost can be read against context length in SQL.
    Built on demand: it needs polars and the FLOP model, which other queries do not."""
    if trace.manifest is None:
        raise TraceError(f"{trace.path} carries no dsocr manifest, so there is no decode_model view")
    from dsocr_perf.analyze.metrics import decode_model_frame

    trace.con.register("decode_model", decode_model_frame(trace.manifest).to_arrow())


def _print_rows(columns, rows, as_csv: bool, as_json: bool) -> None:
    if as_json:
        import json

        click.echo(json.dumps([dict(zip(columns, r)) for r in rows], indent=2, default=str))
    elif as_csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        from dsocr_perf.analyze.table import render

        click.echo(render(columns, [list(r) for r in rows], max_width=80))


# ---------------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    """Entry point: errors become one `Error: ...` line and exit status 2."""
    try:
        cli.main(args=argv, prog_name="dsocr-analyze", standalone_mode=False)
    except TraceError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
