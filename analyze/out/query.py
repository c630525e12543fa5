"""`dsocr-analyze sql TRACE "SELECT ..."`: SQL over the canonical views, sandboxed (analyze.sql)."""
from __future__ import annotations

import csv
import sys

import click

from dsocr_perf.analyze.errors import TraceError, UsageError
from dsocr_perf.analyze.out.table import render

MAX_SQL_BYTES = 1 << 20


def register(cli, common) -> None:
    @cli.command("sql")
    @common.trace_argument
    @click.argument("query", required=False)
    @click.option("-f", "--file", "sql_file", type=click.Path(path_type=common.Path),
                  help="Read the query from a file (e.g. sql/top_kernels.sql).")
    @click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects (NaN and infinities as null).")
    @common.no_cache_option
    def sql_command(trace_path, query, sql_file, as_csv, as_json, no_cache):
        """Run a SELECT over the canonical views of TRACE: kernels, launches, cuda_api, ranges, marks,
        kernel_ranges, range_stats, stages, gpu_gaps, gpus, meta (decode_model with a dsocr manifest).
        The query can read the trace and nothing else."""
        if (query is None) == (sql_file is None):
            raise UsageError("give either a query or -f FILE.sql, e.g. dsocr-analyze sql TRACE "
                             "\"SELECT count(*) FROM kernels\"")
        if as_csv and as_json:
            raise UsageError("--csv and --json are exclusive: choose one output format")
        if sql_file is not None:
            query = read_sql_file(sql_file)
        from dsocr_perf.analyze import sql

        sql.statements(query)           # refuse what is not a query before opening the trace
        trace = common.open(trace_path, no_cache, quiet=as_json or as_csv,
                            accounting=bool(sql.referenced(query, sql.ACCOUNTING_VIEWS)))
        columns, rows = run_query(trace, query)
        print_rows(columns, rows, as_csv, as_json, common.echo, common.echo_json)


def read_sql_file(path) -> str:
    from dsocr_perf.analyze.paths import check_input

    check_input(path, "SQL file")
    try:
        if path.is_dir():
            raise UsageError(f"{path} is a folder: give a .sql file")
        if path.stat().st_size > MAX_SQL_BYTES:
            raise UsageError(f"{path} is larger than 1 MB: not a query file")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text: give a .sql file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read the SQL file ({e.strerror or e})") from None


def run_query(trace, query: str) -> tuple[list[str], list[tuple]]:
    from dsocr_perf.analyze import sql

    con = trace.sandbox(query)
    return sql.run(con, query)


def print_rows(columns, rows, as_csv: bool, as_json: bool, echo, echo_json) -> None:
    if as_json:
        echo_json([{c: _json_value(v) for c, v in zip(columns, r)} for r in rows])
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        echo(render(columns, [list(r) for r in rows], max_width=80))


def _json_value(value):
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return None
    return value
