"""`dsocr-analyze sql TRACE "SELECT ..."`: SQL over the canonical views, sandboxed (analyze.sql)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from dsocr_perf.analyze.errors import TraceError, UsageError
from dsocr_perf.analyze.out.table import render


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
    """The text of a query file: a regular UTF-8 file of at most sql.MAX_SQL_BYTES (else exit 3, bad input)."""
    from dsocr_perf.analyze.paths import check_input
    from dsocr_perf.analyze.sql import MAX_SQL_BYTES

    path = bundled_query(path)
    check_input(path, "SQL file")
    try:
        if path.is_dir():
            raise TraceError(f"{path} is a folder: give a .sql file")
        if path.stat().st_size > MAX_SQL_BYTES:
            raise TraceError(f"{path} is larger than {MAX_SQL_BYTES >> 10} kB, not a query file: give a .sql file "
                             "with one query")
        with open(path, "rb") as f:
            data = f.read(MAX_SQL_BYTES + 1)
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TraceError(f"{path} is not UTF-8 text: give a .sql file saved as UTF-8") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read the SQL file ({e.strerror or e}); check the path and its "
                         "permissions") from None


def bundled_query(path):
    """`sql/NAME.sql` (or `NAME.sql`) that is not a file here: the ready-made query of that name installed with
    the tool, so the queries the output suggests work from any folder."""
    if path.exists() or str(path.parent) not in (".", "sql") or path.suffix != ".sql":
        return path
    import dsocr_perf.sql as queries  # a namespace package: look in each of its folders

    return next((Path(folder) / path.name for folder in queries.__path__ if (Path(folder) / path.name).is_file()), path)


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
    """NaN and the infinities as null, also inside lists, structs and maps (DuckDB LIST/STRUCT/MAP)."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value
