"""Write the analysis of a trace as a small SQLite database beside it (`NAME.analysis.sqlite`), for
people who query with sqlite3 or browse with Datasette. The trace itself is only read.

Tables (times in integer ns on the trace clock):
- `stages`: one row per range name, the canonical `stages` table (name, instances, inclusive_ns,
  exclusive_ns, busy_ns, span_ns, cpu_ns, kernels, gpu_ops, launches, and the wall-time accounting).
- `range_instances`: one row per range instance: range_id, name, path, depth, parent_id, pid, tid,
  start_ns, end_ns, kernel_ns (inclusive kernel time), kernels.
- `kernels_by_name`: one row per kernel name (memcpy/memset too): name, kind, category, instances,
  total_ns, avg_ns, min_ns, max_ns.
- `stage_kernels`: one row per (range name, kernel name): instances and total_ns of the kernels the
  range contains (inclusive, like nsys nvtx_kern_sum).
- `dataset_pages`, `dataset_overall`: the per-page and overall statistics of `analyze.dataset`
  (only when the trace has `request` ranges).
- `analysis_meta`: key/value: source path, source kind, created_utc, the manifest JSON, warnings.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from dsocr_perf.analyze.paths import atomic_path, check_output, derived

RANGE_INSTANCES_SQL = """
-- one row per range instance with the kernel time launched inside it (inclusive)
WITH gpu AS (
    SELECT kr.range_id, sum(k.dur_ns)::BIGINT AS kernel_ns, count(*)::BIGINT AS kernels
    FROM kernel_ranges kr JOIN kernels k USING (op_id)
    WHERE k.kind = 'kernel'
    GROUP BY kr.range_id
)
SELECT r.range_id, r.name, r.path, r.depth, r.parent_id, r.pid, r.tid, r.start_ns, r.end_ns,
       coalesce(gpu.kernel_ns, 0) AS kernel_ns, coalesce(gpu.kernels, 0) AS kernels
FROM ranges r LEFT JOIN gpu USING (range_id)
ORDER BY r.start_ns, r.range_id
"""

KERNELS_BY_NAME_SQL = """
-- one row per GPU operation name: how often it ran and for how long
SELECT name, any_value(kind) AS kind, any_value(category) AS category, count(*)::BIGINT AS instances,
       sum(dur_ns)::BIGINT AS total_ns, avg(dur_ns) AS avg_ns, min(dur_ns)::BIGINT AS min_ns,
       max(dur_ns)::BIGINT AS max_ns
FROM kernels
GROUP BY name
ORDER BY total_ns DESC, name
"""

STAGE_KERNELS_SQL = """
-- per range name and kernel name: the kernels the range contains (inclusive) and their time
SELECT r.name AS range_name, k.name AS kernel_name, any_value(k.category) AS category,
       count(*)::BIGINT AS instances, sum(k.dur_ns)::BIGINT AS total_ns
FROM kernel_ranges kr JOIN kernels k USING (op_id) JOIN ranges r USING (range_id)
WHERE k.kind = 'kernel'
GROUP BY r.name, k.name
ORDER BY r.name, total_ns DESC, k.name
"""


def default_output(trace_path: Path) -> Path:
    return derived(trace_path, ".analysis.sqlite")


def _dicts(con, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def analysis_tables(trace) -> dict[str, list[dict]]:
    """Every table of the analysis database as a list of rows."""
    from dsocr_perf.analyze.out.dataset import dataset_stats

    con = trace.con
    tables = {
        "stages": trace.table("stages").to_pylist(),
        "range_instances": _dicts(con, RANGE_INSTANCES_SQL),
        "kernels_by_name": _dicts(con, KERNELS_BY_NAME_SQL),
        "stage_kernels": _dicts(con, STAGE_KERNELS_SQL),
    }
    stats = dataset_stats(trace)
    if stats is not None:
        tables["dataset_pages"] = stats.per_page.to_dicts()
        tables["dataset_overall"] = stats.overall.to_dicts()
        tables["dataset_requests"] = stats.requests.to_dicts()
    tables["analysis_meta"] = [
        {"key": "source", "value": str(Path(trace.path).resolve())},
        {"key": "source_kind", "value": getattr(trace, "source", None)},
        {"key": "created_utc", "value": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        {"key": "manifest", "value": json.dumps(trace.manifest) if getattr(trace, "manifest", None) else None},
        {"key": "warnings", "value": json.dumps(list(getattr(trace, "warnings", []) or []))},
    ]
    return tables


def write_analysis_db(trace, out: Path) -> dict[str, int]:
    """Write the tables to `out` (through a temporary file); returns rows per table."""
    import sqlite_utils

    tables = analysis_tables(trace)
    counts = {}
    with atomic_path(out) as tmp:
        db = sqlite_utils.Database(tmp)
        try:
            for name, rows in tables.items():
                if rows:
                    db[name].insert_all(rows)
                counts[name] = len(rows)
        finally:
            db.close()
    return counts


def register(cli, common) -> None:
    @cli.command("writeback", short_help="Stage and kernel tables as NAME.analysis.sqlite.")
    @common.trace_argument
    @click.option("--out", type=click.Path(path_type=Path), default=None,
                  help="Output database (default: TRACE's stem + .analysis.sqlite beside it).")
    @common.force_option
    @common.no_cache_option
    def writeback_command(trace_path: Path, out: Path | None, force: bool, no_cache: bool) -> None:
        """Save the stage and kernel tables of TRACE as NAME.analysis.sqlite (for sqlite3 / Datasette)."""
        out = check_output(out or default_output(trace_path), force, "--out", inputs=(trace_path,))
        trace = common.open(trace_path, no_cache)
        if sys.stderr.isatty():
            click.echo("writeback: building tables...", err=True)
        counts = write_analysis_db(trace, out)
        summary = ", ".join(f"{name} {n}" for name, n in counts.items())
        common.echo(f"wrote {out} ({summary} rows)")
