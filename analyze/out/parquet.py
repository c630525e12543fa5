"""`dsocr-analyze export-parquet TRACE... DIR`: the canonical tables of many traces as one Parquet dataset.

Layout (Hive partitioning by trace, so DuckDB, Spark or Trino read it unchanged):

    DIR/<table>/trace=<stem>/part-0.parquet        table in kernels, launches, cuda_api, ranges, marks,
                                                   range_stats, stages, gpu_gaps, gpus, meta

`<stem>` is the trace's file name without its suffix (run.sqlite.gz -> run), made safe for a folder
name; the columns are those of the canonical views (README), with names dictionary-encoded. Query
with e.g. `SELECT trace, name, sum(dur_ns) FROM read_parquet('DIR/kernels/*/*.parquet',
hive_partitioning = true) GROUP BY ALL`. A trace's partition is written to a temporary folder and
renamed into place; an existing one is replaced only with --force.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import click

from dsocr_perf.analyze.errors import OutputError, UsageError
from dsocr_perf.analyze.paths import stem

TABLES = ("kernels", "launches", "cuda_api", "ranges", "marks", "range_stats", "stages", "gpu_gaps", "gpus", "meta")


def partition_name(trace_path: Path) -> str:
    """The trace's stem as a Hive partition value: letters, digits, '.', '_', '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem(trace_path))[:120] or "trace"


def export(trace, out_dir: Path, force: bool) -> dict[str, int]:
    """Write every canonical table of `trace` under out_dir; returns rows per table."""
    import pyarrow.parquet as pq

    value = partition_name(trace.path)
    counts = {}
    for table in TABLES:
        target = out_dir / table / f"trace={value}"
        if target.exists() and not force:
            raise OutputError(f"{target} exists: pass --force to replace it, or give another folder")
        data = trace.table(table)
        folder = out_dir / table
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{value[:60]}.", suffix=".part", dir=folder))
        except OSError as e:
            raise OutputError(f"cannot write in {folder} ({e.strerror or e}); pass a writable folder") from None
        try:
            pq.write_table(data, tmp / "part-0.parquet", compression="zstd")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except OSError as e:
            raise OutputError(f"cannot write {target} ({e.strerror or e}); check free space and permissions") \
                from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        counts[table] = data.num_rows
    return counts


def register(cli, common) -> None:
    @cli.command("export-parquet", short_help="Canonical tables of many traces as one Parquet dataset.")
    @click.argument("paths", metavar="TRACE... DIR", nargs=-1, required=True, type=click.Path(path_type=Path))
    @common.force_option
    @common.no_cache_option
    def export_parquet_command(paths: tuple[Path, ...], force: bool, no_cache: bool) -> None:
        """Write the canonical tables of each TRACE under DIR, Hive-partitioned by trace
        (DIR/<table>/trace=<name>/part-0.parquet), for DuckDB, Spark or Trino."""
        if len(paths) < 2:
            raise UsageError("give one or more traces and then the output folder: "
                             "dsocr-analyze export-parquet run1.sqlite run2.sqlite out/")
        *traces, out_dir = paths
        if out_dir.exists() and not out_dir.is_dir():
            raise OutputError(f"{out_dir} is a file: give a folder for the Parquet dataset")
        names = [partition_name(t) for t in traces]
        if len(set(names)) != len(names):
            raise UsageError("two traces have the same name (" + ", ".join(sorted({n for n in names if names.count(n) > 1}))
                             + "): their partitions would collide; rename one")
        for trace_path in traces:
            if out_dir.resolve() == trace_path.resolve() or (trace_path.is_dir() and
                                                             out_dir.resolve().is_relative_to(trace_path.resolve())):
                raise OutputError(f"{out_dir} is the input trace (or inside it): give another folder")
            trace = common.open(trace_path, no_cache)
            counts = export(trace, out_dir, force)
            common.echo(f"wrote {out_dir}/*/trace={partition_name(trace_path)} ("
                        + ", ".join(f"{t} {n:,}" for t, n in counts.items()) + " rows)")
