"""writeback: the analysis as NAME.analysis.sqlite beside the trace; numbers equal the attribution's and
NVIDIA's reference CSVs; the trace itself is untouched."""
import csv
import hashlib
import shutil
import sqlite3
from collections import defaultdict

import pytest
from cli_helper import run_analyze as run

from dsocr_perf.analyze.out.writeback import default_output, write_analysis_db
from dsocr_perf.analyze.trace import open_trace


@pytest.fixture(scope="module")
def written(shared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("writeback")
    trace_path = folder / "nvtx-features-2025.3.sqlite"
    shutil.copy(shared / "fixtures/nsys/nvtx-features-2025.3.sqlite", trace_path)
    before = hashlib.sha256(trace_path.read_bytes()).hexdigest()
    trace = open_trace(trace_path, cache=False)
    out = default_output(trace_path)
    counts = write_analysis_db(trace, out)
    return trace, trace_path, out, counts, before


def test_beside_the_trace_and_trace_untouched(written):
    trace, trace_path, out, counts, before = written
    assert out == trace_path.with_name("nvtx-features-2025.3.analysis.sqlite")
    assert hashlib.sha256(trace_path.read_bytes()).hexdigest() == before
    db = sqlite3.connect(out)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"stages", "range_instances", "kernels_by_name", "stage_kernels", "analysis_meta"} <= tables
    assert counts["range_instances"] == 20 and counts["stages"] == 13


def test_stage_table_equals_the_stages_table(written):
    trace, _, out, _, _ = written
    db = sqlite3.connect(out)
    db.row_factory = sqlite3.Row
    stored = {r["name"]: dict(r) for r in db.execute("SELECT * FROM stages")}
    for row in (trace).polars("stages").iter_rows(named=True):
        assert stored[row["name"]] == row


def test_kernel_tables_equal_nsys_reports(written, shared):
    _, _, out, _, _ = written
    reports = shared / "fixtures/nsys/nvtx-features-2025.3.reports"
    db = sqlite3.connect(out)
    # cuda_gpu_kern_sum: per kernel name, total time and instances
    by_name = {name: (total, n) for name, total, n in
               db.execute("SELECT name, total_ns, instances FROM kernels_by_name WHERE kind = 'kernel'")}
    reference = {r["Name"]: (int(r["Total Time (ns)"]), int(r["Instances"]))
                 for r in csv.DictReader(open(reports / "cuda_gpu_kern_sum.csv"))}
    assert by_name == reference
    # nvtx_kern_sum: per (range, kernel name), summed over the report's per-thread rows
    expected = defaultdict(lambda: [0, 0])
    for r in csv.DictReader(open(reports / "nvtx_kern_sum.csv")):
        if r["NVTX Range"]:
            key = (r["NVTX Range"].lstrip(":"), r["Kernel Name"])  # nsys 2025.3 prints ':name' for the default domain
            expected[key][0] += int(r["Total Time (ns)"])
            expected[key][1] += int(r["Kern Inst"])
    stored = {(rn, kn): [total, n] for rn, kn, total, n in
              db.execute("SELECT range_name, kernel_name, total_ns, instances FROM stage_kernels")}
    assert stored == dict(expected)


def test_cli_refuses_overwrite(written, capsys):
    _, trace_path, out, _, _ = written
    code, stdout, err = run(capsys, "writeback", str(trace_path), "--no-cache")
    assert code == 4 and stdout == ""
    assert err.splitlines() == [f"Error: {out} exists: pass --force to overwrite it, or --out another file"]
    code, stdout, _ = run(capsys, "writeback", str(trace_path), "--force", "--no-cache")
    assert code == 0 and stdout.startswith(f"wrote {out} (stages 13, range_instances 20")


def test_cli_missing_trace(tmp_path, capsys):
    code, _, err = run(capsys, "writeback", str(tmp_path / "gone.sqlite"))
    assert code == 3 and len(err.splitlines()) == 1 and "no such file" in err
