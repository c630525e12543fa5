"""export-parquet: the canonical tables of several traces as one Hive-partitioned Parquet dataset,
read back by DuckDB with the same numbers as NVIDIA's reports; and nsys's own Parquet export read as a
trace (tests/nsys_parquet.py writes one; the reference test runs every export that way too)."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import duckdb
import pytest
from cli_helper import run_analyze as run

REPO = Path(__file__).resolve().parents[1]
KERNELS_OF_THE_FAST_EXAMPLE = (84_307, 307_873_065)


def _kern_sum(shared, name):
    with open(shared / f"fixtures/nsys/{name}.reports/cuda_gpu_kern_sum.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return sum(int(r["Instances"]) for r in rows), sum(int(r["Total Time (ns)"]) for r in rows)


def test_export_two_traces_and_query_them_together(capsys, shared, tmp_path):
    traces = []
    for name in ("nvtx-features-2025.3", "tiny-2025.3"):
        copy = tmp_path / f"{name}.sqlite"
        shutil.copy(shared / f"fixtures/nsys/{name}.sqlite", copy)
        traces.append(copy)
    out = tmp_path / "dataset"
    code, stdout, err = run(capsys, "export-parquet", *traces, out, "--no-cache")
    assert code == 0, err
    assert stdout.count("wrote") == 2
    con = duckdb.connect()
    got = dict((t, (n, s)) for t, n, s in con.execute(f"""
        SELECT trace, count(*), sum(dur_ns) FROM read_parquet('{out}/kernels/*/*.parquet', hive_partitioning = true)
        WHERE kind = 'kernel' GROUP BY trace""").fetchall())
    assert got == {name: _kern_sum(shared, name) for name in ("nvtx-features-2025.3", "tiny-2025.3")}
    stages = con.execute(f"""SELECT trace, kernels FROM read_parquet('{out}/stages/*/*.parquet', hive_partitioning = true)
                             WHERE name = 'prefill'""").fetchall()
    assert stages == [("tiny-2025.3", 5)]                        # tiny-2025.3.reports/nvtx_kern_sum.csv
    # a second export of the same trace needs --force
    code, _, err = run(capsys, "export-parquet", traces[1], out, "--no-cache")
    assert code == 4 and "pass --force" in err
    assert run(capsys, "export-parquet", traces[1], out, "--no-cache", "--force")[0] == 0


def test_usage_errors(capsys, tmp_path):
    code, _, err = run(capsys, "export-parquet", tmp_path / "only-one")
    assert code == 2 and err.startswith("Error: give one or more traces and then the output folder")


@pytest.mark.parametrize("name", ["nvtx-features-2025.3", "tiny-2025.3"])
def test_nsys_parquet_folder_opens_like_the_sqlite(shared, tmp_path, name):
    from nsys_parquet import to_parquetdir

    from dsocr_perf.analyze.trace import open_trace

    sqlite = shared / f"fixtures/nsys/{name}.sqlite"
    folder = to_parquetdir(sqlite, tmp_path / name)
    a, b = open_trace(folder, cache=False), open_trace(sqlite, cache=False)
    assert a.format == "parquet" and b.format == "sqlite"
    for table in ("stages", "range_stats", "ranges", "cuda_api", "gpu_gaps"):
        assert a.table(table).equals(b.table(table)), table


def test_nsys_own_parquetdir_export_gives_the_numbers_of_its_sqlite_export(tmp_path):
    """The same H100 capture exported twice by nsys 2025.3 (`nsys export --type parquetdir` and `--type sqlite`,
    the committed fast-engine example): every canonical table and the JSON document agree."""
    import tarfile

    from dsocr_perf.analyze.out.document import document
    from dsocr_perf.analyze.trace import open_trace

    with tarfile.open(REPO / "tests/data/nsys_parquetdir/h100-gundam-fast.parquetdir.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    folder = tmp_path / "h100-gundam-fast.parquetdir"
    a = open_trace(folder, cache=False)
    b = open_trace(REPO / "traces/examples/h100-gundam-fast.sqlite.gz", cache=False)
    assert a.format == "parquet" and b.format == "sqlite.gz"
    for table in ("kernels", "stages", "range_stats", "ranges", "cuda_api", "gpu_gaps", "gpu_metrics"):
        assert a.table(table).equals(b.table(table)), table
    da, db = document(a), document(b)
    for doc in (da, db):
        doc.pop("trace"), doc.pop("trace_info")
    assert da == db
    # the SQLite export's own count: SELECT count(*), sum("end" - start) FROM CUPTI_ACTIVITY_KIND_KERNEL
    assert (da["totals"]["kernels"], da["totals"]["kernel_ns"]) == KERNELS_OF_THE_FAST_EXAMPLE
